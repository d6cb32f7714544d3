"""A rebuild that explains itself: `atlas plan` and `atlas status` say how many units are done and
why each of the others is to be computed (weights, a setting from what to what, new channels),
with counts that add up; unit labels name the real channels."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from atlas.models import load_model
from atlas.plan.spec import load_spec
from atlas.plan.units import Unit
from atlas.run.job import run_job

JOB = """
[job]
out = "{out}"
[model]
name = "tiny-cnn"
checkpoint = "{checkpoint}"
[[layers]]
name = "conv2"
channels = {channels}
[render]
steps = {steps}
size = 32
batch = 2
objectives = ["channel"]
channels_per_unit = 1
[examples]
enabled = false
[execute]
workers = 1
"""


def _write(folder: Path, checkpoint: str = "a.pt", channels: str = '"0:2"', steps: int = 2) -> Path:
    job = folder / "job.toml"
    job.write_text(JOB.format(out=folder / "out", checkpoint=checkpoint, channels=channels, steps=steps))
    return job


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "atlas.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _checkpoints(folder: Path) -> None:
    weights = load_model("tiny-cnn").module.state_dict()
    torch.save(weights, folder / "a.pt")
    torch.save({k: v + 0.01 for k, v in weights.items()}, folder / "b.pt")


def test_plan_and_status_say_why_each_unit_is_to_be_computed(tmp_path: Path) -> None:
    _checkpoints(tmp_path)
    job = _write(tmp_path)
    first = _cli("plan", str(job))
    assert "0 already done, 2 to compute" in first and "2 because: first run: nothing is stored yet" in first
    assert run_job(load_spec(job), build=False).ok

    plan = _cli("plan", str(_write(tmp_path, steps=3)))
    assert "0 already done, 2 to compute" in plan and "2 because: render.steps 2 -> 3" in plan

    plan = _cli("plan", str(_write(tmp_path, channels='"0:4"')))
    assert (
        "2 already done, 2 to compute" in plan
        and "2 because: new channels of conv2 (not in the last run)" in plan
    )

    swapped = _write(tmp_path, checkpoint="b.pt")
    status = _cli("status", str(swapped))
    counts = dict(re.findall(r"(done|pending|failed|stale): (\d+)", status.splitlines()[0]))
    assert counts == {"done": "0", "pending": "2", "failed": "0", "stale": "2"}
    assert re.search(r"2 to compute because: the model's weights changed \(digest \w+ -> \w+\)", status)
    assert "2 stale: stored units this job no longer asks for" in status


def test_labels_name_the_real_channels() -> None:
    from atlas.kinds.render import RenderWork
    from atlas.plan.spec import RenderSpec

    def label(channels: tuple[int, ...]) -> str:
        return Unit("conv2", channels, "k", RenderWork(RenderSpec())).label

    assert label((0, 3, 7)) == "render conv2 0,3,7"
    assert label(tuple(range(8))) == "render conv2 0..7"
    assert label((0, 1, 2, 5, 9, 10)) == "render conv2 0..2,5,9..10"
    assert label((4,)) == "render conv2 4"
