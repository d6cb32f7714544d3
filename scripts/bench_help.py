"""How fast `atlas --help` answers, and its peak memory: each run a fresh interpreter.

    python scripts/bench_help.py --runs 5 [--code OLD_TREE ...]

`--code` adds a checkout of another revision (e.g. `git worktree add /tmp/old REV`), timed in the
same run, side by side with this tree: absolute times drift on shared machines, ratios less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "import sys; from atlas.cli import main; sys.argv = ['atlas', '--help']; main()"


def one_run(tree: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `atlas --help` with the package of `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", COMMAND], env=env, cwd=tree, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"atlas --help failed in {tree} (exit {child.returncode})")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--code", type=Path, action="append", default=[], help="another checkout to time")
    args = parser.parse_args()
    trees = [ROOT, *args.code]
    results: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for _ in range(args.runs):  # interleaved, so that drift hits every tree alike
        for tree in trees:
            results[tree].append(one_run(tree))
    for tree in trees:
        seconds = statistics.median(s for s, _ in results[tree])
        peak = max(m for _, m in results[tree])
        print(f"atlas --help ({tree}): median {seconds:.3f} s over {args.runs} runs, peak RSS {peak:.1f} MiB")


if __name__ == "__main__":
    main()
