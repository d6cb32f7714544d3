"""Figures for docs/CLUSTER.md: what the executor and the store cost beyond the work itself.

    python scripts/measure_cluster.py                 # on a local Ray with 2 CPU workers
    python scripts/measure_cluster.py --units 128

scheduling: many tiny render units (1 step, 16 px) run once in this process and once through
the Executor; the difference per unit is what Ray, pickling and the store add.
What the store pays per unit as it grows is scripts/bench_journal.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from atlas.plan.spec import parse_spec
from atlas.run.job import prepare
from atlas.store.store import Store

SPEC = """
layers = ["conv2", "conv3"]
[job]
name = "overhead"
out = "{out}"
[model]
name = "tiny-cnn"
[render]
steps = 1
size = 16
batch = 1
objectives = ["channel"]
channels_per_unit = 1
[examples]
enabled = false
[execute]
workers = {workers}
"""


def measure_scheduling(units: int, workers: int) -> None:
    from atlas.run.executor import Executor
    from atlas.run.worker import make_context, run_unit

    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec(SPEC.format(out=Path(tmp) / "ray", workers=workers))
        plan = list(prepare(spec).plan.units)
        plan = (plan * (units // len(plan) + 1))[:units]
        plan = [replace(u, key=f"{u.key}-{i}") for i, u in enumerate(plan)]

        context = make_context(spec, "cpu")
        start = time.perf_counter()
        for unit in plan:
            run_unit(context, unit)
        inline = time.perf_counter() - start

        started = time.perf_counter()
        executor = Executor(spec)
        executor.worker_pids()
        startup = time.perf_counter() - started
        store = Store(Path(tmp) / "ray")
        started = time.perf_counter()
        executor.run(plan, store)
        through_executor = time.perf_counter() - started
        executor.shutdown()
        in_worker = sum(e.seconds for e in store.entries())
    per_unit_inline = inline / units * 1000
    per_unit_ray = through_executor / units * 1000 * workers
    print(f"scheduling: {units} units, {workers} workers ({executor.workers_plan.describe()})")
    print(f"  worker start (model load included): {startup:.1f} s")
    print(f"  in this process: {per_unit_inline:.1f} ms/unit")
    print(f"  in the workers (their own timing): {in_worker / units * 1000:.1f} ms/unit")
    print(f"  through the Executor: {through_executor:.2f} s wall = {per_unit_ray:.1f} worker-ms/unit")
    print(f"  overhead: {per_unit_ray - in_worker / units * 1000:.1f} ms/unit beyond the work itself")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=64, help="tiny units for the scheduling figure")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    measure_scheduling(args.units, args.workers)


if __name__ == "__main__":
    main()
