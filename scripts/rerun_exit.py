"""How often a no-op rerun of a finished job exits non-zero (target: 0 of 100).

    python scripts/rerun_exit.py                     # 100 reruns, one busy process beside them
    python scripts/rerun_exit.py --runs 30 --load 0  # an idle machine

It writes a small job (a `module:` model with a checkpoint, dataset examples from a folder of
generated images in several scan shards), runs it once, then runs
`python -m atlas.cli run job.toml --out out --no-site` again `--runs` times, each a fresh process
with every unit already done, and prints how many exited non-zero and with which status. A
nightly rebuild whose model did not change is exactly this run. `--load N` keeps N processes
computing (torch matrix products, as another atlas job would) while it reruns: exits that race
with background threads show up on a busy machine, not on an idle one.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

MODULE = """from torch import nn


def build():
    net = nn.Sequential()
    net.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("relu1", nn.ReLU())
    net.add_module("conv2", nn.Conv2d(8, 8, 3, padding=1))
    net.input_size = 32
    return net
"""

JOB = """[job]
name = "rerun"
out = "out"
[model]
name = "module:rerunnet:build"
checkpoint = "weights.pt"
[[layers]]
name = "conv2"
channels = "0:2"
[render]
steps = 2
size = 32
batch = 2
objectives = ["channel"]
channels_per_unit = 1
[examples]
source = "images"
k = 2
shard_size = {shard_size}
[execute]
workers = 1
"""

BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a @ a\n"


def write_job(folder: Path, images: int, shard_size: int) -> Path:
    """The job, its model module, checkpoint and images, in `folder`; returns the spec's path."""
    (folder / "rerunnet.py").write_text(MODULE)
    sys.path.insert(0, str(folder))
    from rerunnet import build  # noqa: PLC0415  (written just above)

    torch.manual_seed(0)
    net: nn.Module = build()
    torch.save(net.state_dict(), folder / "weights.pt")
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    for i in range(images):
        pixels = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i:03d}.png")
    spec = folder / "job.toml"
    spec.write_text(JOB.format(shard_size=shard_size))
    return spec


def atlas_run(folder: Path) -> subprocess.CompletedProcess:
    """`atlas run job.toml --out out --no-site` in a fresh process, the model's module importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "atlas.cli", "run", "job.toml", "--out", "out", "--no-site"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)


def rerun_statuses(folder: Path, runs: int) -> list[int]:
    """The exit status of each of `runs` reruns; prints the first failure's last lines."""
    statuses = []
    for _ in range(runs):
        done = atlas_run(folder)
        if done.returncode and all(s == 0 for s in statuses):
            print(f"first failure, exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        statuses.append(done.returncode)
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100, help="no-op reruns (default 100)")
    parser.add_argument("--load", type=int, default=1, help="busy processes beside the reruns (default 1)")
    parser.add_argument("--images", type=int, default=16, help="dataset images (default 16)")
    parser.add_argument("--shard-size", type=int, default=2, help="images per scan unit (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_job(folder, args.images, args.shard_size)
        first = atlas_run(folder)
        if first.returncode:
            sys.exit(f"the first run failed (exit {first.returncode}):\n{first.stderr[-2000:]}")
        print(first.stdout.strip())
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
        try:
            start = time.perf_counter()
            statuses = rerun_statuses(folder, args.runs)
            seconds = time.perf_counter() - start
        finally:
            for process in busy:
                process.kill()
                process.wait()
    failed = collections.Counter(s for s in statuses if s)
    by_status = ", ".join(f"exit {s}: {n}" for s, n in sorted(failed.items()))
    print(
        f"{sum(failed.values())} of {len(statuses)} no-op reruns exited non-zero"
        f"{f' ({by_status})' if failed else ''}; {args.load} busy processes beside them; "
        f"{seconds / max(1, len(statuses)):.1f} s per rerun; load average {os.getloadavg()[0]:.1f}"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
