"""A successful run shows only the tool's own progress and summary: what Ray prints in the driver
(its core worker's log lines, Ray Data's warnings) goes to a log file the summary names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

JOB = """
[job]
out = "{out}"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:2"
[render]
steps = 2
size = 32
objectives = ["channel"]
[examples]
source = "demo"
k = 2
shard_size = 50
batch_size = 25
[execute]
workers = 1
"""


def test_a_successful_run_prints_only_its_progress_and_summary(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(out=tmp_path / "out"))
    run = subprocess.run([sys.executable, "-m", "atlas.cli", "run", str(job)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"built job: \d+ units done, 0 already done, 0 failed in \d+ s -> \S+\n", run.stdout)
    lines = [line for line in re.split(r"[\r\n]+", run.stderr) if line.strip()]
    own = [line for line in lines if line.startswith("atlas:")]  # the progress bar
    named = [line for line in lines if line.startswith("  Ray's messages: ")]
    assert own and len(own) + len(named) == len(lines), lines  # nothing else: no Ray line
    for line in named:  # where Ray's lines went, for when something fails
        log = Path(line.split(": ", 1)[1])
        assert log.is_file() and log.stat().st_size > 0
        log.unlink()
