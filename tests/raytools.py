"""Helpers for tests that run a real local Ray: one cluster per module, tiny specs, manifest reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from atlas.plan.spec import JobSpec, parse_spec
from atlas.store.store import Store

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def env_with_tests_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose PYTHONPATH holds tests/, so workers and subprocesses import faultmodels."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


@contextmanager
def local_ray(num_cpus: int = 2, num_gpus: int = 0) -> Iterator[str]:
    """A fresh local Ray whose workers can import tests/ modules; yields its address.

    Ray workers inherit the environment of the raylet, which inherits this process's, so the
    PYTHONPATH set here reaches them (Ray itself only passes the driver script's folder).
    """
    if ray.is_initialized():  # another module left its cluster running
        ray.shutdown()
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_with_tests_on_path()["PYTHONPATH"]
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def tiny_spec_text(
    out: Path,
    model: str = "tiny-cnn",
    layer: str = "conv2",
    channels: str = "0:4",
    steps: int = 4,
    workers: int = 2,
    extra: str = "",
) -> str:
    """A spec that renders one channel per unit with a few steps and no dataset examples."""
    return f"""
[job]
name = "faults"
out = "{out}"
[model]
name = "{model}"
[[layers]]
name = "{layer}"
channels = "{channels}"
[render]
steps = {steps}
size = 32
batch = 2
objectives = ["channel"]
channels_per_unit = 1
[examples]
enabled = false
[execute]
workers = {workers}
{extra}
"""


def tiny_spec(out: Path, **kwargs: Any) -> JobSpec:
    return parse_spec(tiny_spec_text(out, **kwargs), source="<test spec>")


def write_spec(path: Path, out: Path, **kwargs: Any) -> Path:
    path.write_text(tiny_spec_text(out, **kwargs))
    return path


def manifest_units(out: Path) -> list[dict]:
    """The committed unit records, as a fresh reader sees them (empty before the first unit)."""
    return [asdict(entry) for entry in Store(out).entries()]
