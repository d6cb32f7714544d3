"""The commands that only read the store (`atlas --help`, `atlas site`, `atlas verify`) load
neither torch nor Ray: each runs in a fresh interpreter, which then lists what it imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]


def _run_fresh(args: list[str]) -> dict:
    """`atlas ARGS` in a new interpreter: its exit code, output, and whether torch or Ray loaded."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from click.testing import CliRunner
        from atlas.cli import main
        result = CliRunner().invoke(main, {args!r})
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "ray", "torchvision"}})
        print(json.dumps({{"code": result.exit_code, "output": result.output, "heavy": heavy}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("light") / "atlas"
    options = SyntheticOptions(image_size=16, crop_size=12, examples_k=4, diversity=2, bins=8)
    write_synthetic_store(out, [SyntheticLayer("mixed3a", 6), SyntheticLayer("mixed4a", 4)], options)
    return out


@pytest.mark.parametrize("args", [["--help"], ["site", "--help"], ["verify", "--help"], ["status", "--help"]])
def test_help_loads_neither_torch_nor_ray(args: list[str]) -> None:
    result = _run_fresh(args)
    assert result["code"] == 0 and "Usage:" in result["output"]
    assert result["heavy"] == []


def test_site_builds_without_torch_or_ray(stored: Path) -> None:
    result = _run_fresh(["site", str(stored)])
    assert result["code"] == 0, result["output"]
    assert (stored / "site" / "index.html").is_file() or "index.html" in result["output"]
    assert result["heavy"] == []


def test_verify_checks_without_torch_or_ray(stored: Path) -> None:
    result = _run_fresh(["verify", str(stored), "--dry-run"])
    assert result["code"] == 0, result["output"]
    assert result["heavy"] == []
    shard = next(p for p in stored.rglob("*.parquet"))  # damage one: verify still torch-free, and finds it
    shard.write_bytes(shard.read_bytes()[:-8] + b"corrupt!")
    damaged = _run_fresh(["verify", str(stored), "--dry-run"])
    assert damaged["code"] == 1 and "damaged" in damaged["output"]
    assert damaged["heavy"] == []


def test_render_help_still_lists_the_registries() -> None:
    """The registries load when render's help is shown, so its choices are all there."""
    result = _run_fresh(["render", "--help"])
    assert result["code"] == 0
    for name in ("fourier", "wider", "warmup-cosine", "adam", "tv", "fp32"):
        assert name in result["output"]
