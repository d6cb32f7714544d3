"""A unit kind registered from a module under tests/ (no edit under atlas/) is planned, run on
Ray, stored, costed and shown on the layer page; kinds registered wrongly are refused.

The kind (tests/kind_plugin.py) is installed as a plugin of a package in a fresh process, as in
test_plugins.py, so this process's registries keep only the built-in kinds.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from plugintools import plugin_environment
from raytools import write_spec

from atlas.core.registry import Registry, RegistryError
from atlas.kinds.render import RenderWork
from atlas.models import load_model
from atlas.plan.kinds import KindError, register_kind
from atlas.plan.spec import RenderSpec
from atlas.plan.units import Unit
from atlas.plan.work import Work
from atlas.run import cost
from atlas.run.cost import CostError, Throughput
from atlas.store.store import Store

KIND = "noise_mean"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atlas.cli", *args], capture_output=True, text=True, env=env)


def test_a_plugin_kind_is_planned_run_stored_costed_and_shown(tmp_path: Path) -> None:
    env = plugin_environment(tmp_path, "atlas-noise-mean", "noise_mean", "kind_plugin")[1]
    out = tmp_path / "out"
    job = write_spec(tmp_path / "job.toml", out, channels="0:3", workers=1)
    speed = tmp_path / "speed.json"
    Throughput("cpu", "tiny-cnn", scan_images_per_s=3.0, render_image_steps_per_s=1000.0).save(speed)

    planned = _cli(env, "plan", str(job), "--throughput", str(speed))
    assert planned.returncode == 0, planned.stderr
    assert "noise_mean conv2 0..2" in planned.stdout  # one unit for the layer's three channels
    estimate = next(line for line in planned.stdout.splitlines() if "units left: estimated" in line)
    assert f"{KIND} {3 / 3.0 / 3600:.3g}" in estimate  # three noise images at 3 images/s

    ran = _cli(env, "run", str(job))
    assert ran.returncode == 0, ran.stderr
    assert "4 units done" in ran.stdout  # three render units and the plugin's

    store = Store(out)
    entries = [e for e in store.entries() if e.kind == KIND]
    assert [(e.layer, tuple(e.channels), e.status) for e in entries] == [("conv2", (0, 1, 2), "done")]
    table = store.read_unit(entries[0].key, KIND).to_pylist()
    model = load_model("tiny-cnn")  # the same means, computed here without the plugin
    noise = torch.rand(3, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        means = model.activations(noise, ["conv2"])["conv2"].mean(dim=(0, 2, 3))
    assert [row["channel"] for row in table] == [0, 1, 2]
    assert [row["mean"] for row in table] == pytest.approx([float(means[c]) for c in range(3)], abs=1e-5)

    page = next(p for p in (out / "site").glob("*.html") if "conv2" in p.name and "." not in p.stem)
    text = page.read_text()
    assert "Mean activation on noise" in text and text.count("<tr><td>") == 3
    assert f"<td>{table[1]['mean']:.4f}</td>" in text

    rerun = _cli(env, "run", str(job))  # stored: nothing recomputed, the plugin's unit included
    assert rerun.returncode == 0 and "0 units done, 4 already done" in rerun.stdout, rerun.stdout


@dataclass(frozen=True)
class _Unversioned(Work):
    kind: ClassVar[str] = "unversioned"


@dataclass(frozen=True)
class _Costless(Work):
    kind: ClassVar[str] = "costless"
    version: ClassVar[str] = "1"


def test_kinds_registered_wrongly_are_refused() -> None:
    with pytest.raises(KindError, match="needs `kind` and `version`"):
        register_kind(_Unversioned, phase="first", planner=lambda *a: [], handler=lambda *a: {})
    with pytest.raises(KindError, match="phase 'later' is not one of first, merge, stage"):
        register_kind(_Costless, phase="later", planner=lambda *a: [], handler=lambda *a: {})  # type: ignore[arg-type]
    with pytest.raises(KindError, match="needs a planner"):
        register_kind(_Costless, phase="merge", handler=lambda *a: {})
    with pytest.raises(RegistryError, match="render"):  # a name registered twice
        register_kind(RenderWork, phase="first", planner=lambda *a: [], handler=lambda *a: {})


def test_a_kind_without_a_cost_model_stops_the_estimate_by_name(monkeypatch) -> None:
    kinds = Registry("unit kind")
    monkeypatch.setattr(cost, "UNIT_KINDS", kinds)
    monkeypatch.setattr("atlas.plan.kinds.UNIT_KINDS", kinds)
    register_kind(_Costless, phase="stage", handler=lambda *a: {})
    speed = Throughput("cpu", "tiny-cnn", 10.0, 10.0)
    unit = Unit("conv2", (0,), "costless-1", _Costless())
    with pytest.raises(CostError, match="unit kind 'costless' registers no cost model"):
        cost.estimate([unit], cost_spec(), speed)
    other = Unit("conv2", (0,), "render-1", RenderWork(RenderSpec()))
    with pytest.raises(RegistryError, match="unknown unit kind 'render'"):  # not in this registry
        cost.estimate([other], cost_spec(), speed)


def cost_spec():
    from atlas.plan.spec import parse_spec

    return parse_spec('[model]\nname = "tiny-cnn"\n[[layers]]\nname = "conv2"\n', source="<test>")
