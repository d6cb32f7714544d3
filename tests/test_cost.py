"""GPU-hour estimates from measured throughput, budgets before and during a job, the plan's report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas.cli import main
from atlas.data.source import ShardRef
from atlas.kinds.examples.units import ExamplesWork, ScanWork
from atlas.kinds.render import RenderWork
from atlas.plan.spec import CostSpec, RenderSpec, SpecError, parse_spec
from atlas.plan.units import Unit
from atlas.run.cost import BudgetExceeded, CostError, Spend, Throughput, check_estimate, estimate

SPEC = """
[job]
name = "cost"
out = "{out}"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:8"
[render]
steps = 100
objectives = ["channel", "diversity"]
diversity = 3
channels_per_unit = 4
[examples]
enabled = false
[cost]
{cost}
"""

SPEED = Throughput("test device", "tiny-cnn", scan_images_per_s=50.0, render_image_steps_per_s=20.0)


def spec_with(tmp_path: Path, cost: str = ""):
    return parse_spec(SPEC.format(out=tmp_path / "out", cost=cost), base=tmp_path)


def render_unit(spec) -> Unit:
    return Unit("conv2", (0, 1, 2, 3), "r", RenderWork(spec.render))


def test_estimate_counts_images_times_steps_for_renders_and_images_for_scans(tmp_path: Path) -> None:
    spec = spec_with(tmp_path)
    render = render_unit(spec)
    scan_work = ScanWork(("conv2",), 3, 8, 0, 0, "data")
    scan = Unit("*", (), "s", scan_work, inputs=ShardRef(0, tuple(f"i{n}" for n in range(90))))
    examples = Unit("conv2", (0,), "e", ExamplesWork(("s",), 96, 64, 32, (0.25, 0.75), 0, False))
    found = estimate([render, render, scan, examples], spec, SPEED)
    # 4 channels x (1 + 3 diversity) images x 100 steps / 20 image-steps/s = 80 s per render unit
    assert found.gpu_hours["render"] == pytest.approx(160 / 3600)
    assert found.gpu_hours["scan"] == pytest.approx(90 / 50 / 3600)
    assert found.total == pytest.approx((160 + 1.8) / 3600)
    assert "at 2 per GPU-hour" in found.describe(2.0)


def test_an_estimate_over_the_budget_stops_the_job_before_it_starts(tmp_path: Path) -> None:
    SPEED.save(tmp_path / "speed.json")
    units = [render_unit(spec_with(tmp_path))] * 2  # 160 s = 0.044 GPU-hours
    over = spec_with(tmp_path, 'throughput = "speed.json"\nbudget_gpu_hours = 0.04')
    with pytest.raises(BudgetExceeded, match=r"0\.04 GPU-hours.*Nothing was computed"):
        check_estimate(units, over)
    money = spec_with(tmp_path, 'throughput = "speed.json"\nprice_per_gpu_hour = 10\nbudget = 0.4')
    with pytest.raises(BudgetExceeded, match=r"budget of 0.4 \(0.44 spent or due\)"):
        check_estimate(units, money)
    under = spec_with(tmp_path, 'throughput = "speed.json"\nbudget_gpu_hours = 0.05')
    assert check_estimate(units, under).total == pytest.approx(160 / 3600)


def test_spend_counts_the_gpus_held_over_time_and_stops_past_the_budget() -> None:
    now = [0.0]
    spend = Spend(CostSpec(price_per_gpu_hour=2.0, budget=5.0), gpus=lambda: 2.0, clock=lambda: now[0])
    seen = []
    tick = spend.watch(lambda unit, outcome: seen.append(outcome))
    unit = Unit("conv2", (0,), "r", RenderWork(RenderSpec()))
    now[0] = 3600.0  # 2 GPU-hours = 4
    tick(unit, "done")
    now[0] = 7200.0  # 4 GPU-hours = 8 > 5
    with pytest.raises(BudgetExceeded, match=r"stopped at 4 GPU-hours.*rerun with a larger budget"):
        tick(unit, "done")
    assert seen == ["done", "done"]  # the unit that crossed the budget was still reported


def test_a_money_budget_needs_a_price_and_figures_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="price_per_gpu_hour"):
        spec_with(tmp_path, "budget = 10")
    with pytest.raises(SpecError, match="cost.throughput.*atlas calibrate"):
        spec_with(tmp_path, 'throughput = "missing.json"')
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CostError, match="atlas calibrate"):
        Throughput.load(tmp_path / "bad.json")


def test_plan_prints_gpu_hours_and_cost(tmp_path: Path) -> None:
    SPEED.save(tmp_path / "speed.json")
    job = tmp_path / "job.toml"
    job.write_text(SPEC.format(out=tmp_path / "out", cost="price_per_gpu_hour = 3.0"))
    result = CliRunner().invoke(main, ["plan", str(job), "--throughput", str(tmp_path / "speed.json")])
    assert result.exit_code == 0, result.output
    # 2 render units of 80 s: 0.0444 GPU-hours, x 3 = 0.13
    assert (
        "2 units left: estimated 0.0444 GPU-hours (render 0.0444) = 0.13 at 3 per GPU-hour" in result.output
    )
    result = CliRunner().invoke(
        main, ["plan", str(job), "--throughput", str(tmp_path / "speed.json"), "--price", "30"]
    )
    assert "= 1.33 at 30 per GPU-hour on test device" in result.output


def test_the_gpu_checks_figures_are_read_at_the_render_batch(tmp_path: Path) -> None:
    report = {
        "env": {"device_name": "NVIDIA H200"},
        "render": {"fp32": {"4": {"image_steps_per_s": 100.0}, "16": {"image_steps_per_s": 300.0}}},
        "scan": {"images_per_s": 2500.0},
    }
    (tmp_path / "gpu_check.json").write_text(json.dumps(report))
    speed = Throughput.load(tmp_path / "gpu_check.json", render_batch=8)
    assert (speed.device, speed.scan_images_per_s, speed.render_image_steps_per_s) == (
        "NVIDIA H200",
        2500.0,
        100.0,
    )
    assert Throughput.load(tmp_path / "gpu_check.json", render_batch=16).render_image_steps_per_s == 300.0
