"""scripts/gpu_check.sh with --device cpu: the GPU check's quick settings, so it does not rot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_reports_every_section(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["finished"] and sections["env"]["device"] == "cpu"
    assert not any("error" in figures for figures in sections.values()), sections
    assert sections["tests"].get("status") == "skipped" or sections["tests"]["failures"] == 0
    assert {"1", "2"} <= set(sections["render"]["fp32"]) and sections["render"]["gflop_per_image_step"] > 0
    assert sections["scan"]["images"] == 8 and sections["scan"]["images_per_s"] > 0
    sliced = sections["slice"]
    assert len(sliced["per_layer"]) == 9 and all(f["rows"] == 7 for f in sliced["per_layer"].values())
    assert sliced["shard_bytes"] > 0
    projection = sliced["projection"]
    assert projection["channels"] == 5488 and not projection["partial"]
    compile_min = projection["compile_s_per_worker"] / 60  # every worker compiles once
    assert (
        abs(projection["minutes_on"]["1"] - compile_min - 8 * (projection["minutes_on"]["8"] - compile_min))
        < 0.5
    )
    assert projection["image_steps"] == 5488 * 7 * 512 and projection["image_steps_per_s"] > 0
    ceiling = sliced["ceiling"]
    assert ceiling["bare_ms_per_step"] > 0 and ceiling["render_over_bare"] > 0
    assert ceiling["param_and_transforms_share"] > 0 and ceiling["gflop_per_image_step"] > 0
    stalls = sliced["stalls"]
    assert stalls["serial_s"] > 0 and stalls["pipelined_s"] > 0
    assert 0 <= stalls["stall_share_pipelined"] < 1 and 0 <= stalls["stall_share_serial"] < 1
