"""The benchmark scripts: their measures mean what BENCHMARKS.md says, and a smoke run works."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench  # noqa: E402
from bench_common import interleaved  # noqa: E402
from bench_quality import steps_to_fraction  # noqa: E402
from bench_render import model_input_size  # noqa: E402

from atlas.models import load_model  # noqa: E402


def test_steps_to_fraction_finds_the_first_step_at_ninety_percent() -> None:
    steps = [10, 20, 30, 40]
    curve = torch.tensor([[1.0, 0.0], [9.5, 1.0], [9.8, 2.0], [10.0, 10.0]])
    assert steps_to_fraction(steps, curve) == [20, 40]


def test_interleaved_warms_up_then_rotates_the_order() -> None:
    calls: list[str] = []
    timings = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=2,
        device=torch.device("cpu"),
    )
    assert calls == ["a", "b", "a", "b", "b", "a"]
    assert {name: len(times) for name, times in timings.wall.items()} == {"a": 2, "b": 2}
    assert {name: len(times) for name, times in timings.cpu.items()} == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="repeats"):
        interleaved({"a": lambda: None}, repeats=0, device=torch.device("cpu"))


def test_cpu_time_counts_work_not_waiting() -> None:
    def spin() -> None:
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass

    timings = interleaved(
        {"spin": spin, "sleep": lambda: time.sleep(0.2)}, repeats=1, device=torch.device("cpu")
    )
    assert timings.wall["sleep"][0] >= 0.2
    assert timings.cpu["sleep"][0] < 0.05
    assert timings.cpu["spin"][0] > timings.cpu["sleep"][0]


def test_sections_default_to_cpu_ones_and_reject_unknown_names() -> None:
    assert "batch" not in bench.parse_sections(None, torch.device("cpu"))
    assert "batch" in bench.parse_sections(None, torch.device("cuda"))
    assert bench.parse_sections("quality,render", torch.device("cpu")) == ["render", "quality"]
    with pytest.raises(SystemExit, match="unknown section 'speed'.*render"):
        bench.parse_sections("render,speed", torch.device("cpu"))


def test_model_input_size_follows_the_transforms() -> None:
    assert model_input_size(40, "none") == 40
    assert model_input_size(40, "standard") == 40 + 2 * 12 - 8 - 4  # pad 12, jitter 8, jitter 4


def test_lucent_runs_through_the_shim_and_leaves_no_hooks() -> None:
    pytest.importorskip("lucent")
    from bench_lucent import install_shim, lucent_layer_name, lucent_renderer

    install_shim(torch.device("cpu"))
    import kornia

    assert callable(kornia.get_rotation_matrix2d) and callable(kornia.warp_affine)
    assert lucent_layer_name("_blocks.9") == "_blocks_9"
    model = load_model("tiny-cnn")
    images = lucent_renderer(model.module, "conv2", [0, 1], size=32, steps=2, model_input_size=44)()
    assert images.shape == (2, 32, 32, 3)
    assert images.min() >= 0 and images.max() <= 1
    assert all(not m._forward_hooks for m in model.module.modules())


def test_quick_run_on_tiny_cnn_reports_every_figure(tmp_path: Path) -> None:
    pytest.importorskip("lucent")
    out = tmp_path / "figures.json"
    figures = bench.main(
        [
            "--quick",
            "--only",
            "render,overhead,quality",
            "--model",
            "tiny-cnn",
            "--layer",
            "conv3",
            "--json",
            str(out),
        ]
    )
    render = figures["render"]
    assert {"ours", "lucent", "lucent, model in the default memory layout"} <= set(
        render["channels_per_minute"]
    )
    assert all(v > 0 for v in render["channels_per_minute"].values())
    assert figures["overhead"]["ratio"] > 0
    rows = figures["quality"]["rows"]
    assert {(r["param"], r["transforms"]) for r in rows} == {
        (v, t) for v in ("pixel", "Fourier", "Fourier + decorrelation", "MACO") for t in ("none", "standard")
    }
    assert all(0 <= r["high_frequency_share_median"] <= 1 for r in rows)
    assert json.loads(out.read_text())["layer"] == "conv3"


def test_a_model_without_a_known_mid_layer_needs_one() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "render", "--model", "tiny-cnn"])
