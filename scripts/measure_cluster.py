"""Figures for docs/CLUSTER.md: what the executor and the store cost beyond the work itself.

    python scripts/measure_cluster.py                 # both, on a local Ray with 2 CPU workers
    python scripts/measure_cluster.py --units 128 --manifest-units 700

scheduling: many tiny render units (1 step, 16 px) run once in this process and once through
the Executor; the difference per unit is what Ray, pickling and the store add.
manifest: writes N one-row units into a fresh store, as a big atlas does, and reports how the
per-unit cost grows with the manifest (it is rewritten atomically after every unit).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from atlas.job import prepare
from atlas.spec import parse_spec
from atlas.store import Store

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
    from atlas.execute import Executor
    from atlas.units import make_context, run_unit

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


def measure_manifest(count: int) -> None:
    table = pa.table({"layer": ["mixed4a"], "channel": pa.array([0], pa.int32()), "image": [b"\0" * 2048]})
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        times = []
        for i in range(count):
            start = time.perf_counter()
            store.write_unit(f"render-{i:020d}", "render", "mixed4a", table, channels=range(8 * i, 8 * i + 8))
            times.append(time.perf_counter() - start)
        size = (Path(tmp) / "manifest.json").stat().st_size
        start = time.perf_counter()
        reopened = Store(tmp)
        done = sum(reopened.has(e.key) for e in reopened.entries())
        check = time.perf_counter() - start
    tenth = max(1, count // 10)
    print(f"manifest: {count} units written, manifest {size / 1e6:.2f} MB")
    print(f"  first {tenth}: {statistics.mean(times[:tenth]) * 1000:.1f} ms/unit")
    print(f"  last {tenth}: {statistics.mean(times[-tenth:]) * 1000:.1f} ms/unit")
    print(f"  total {sum(times):.1f} s; reopen + verify every checksum ({done} done): {check:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, default=64, help="tiny units for the scheduling figure")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--manifest-units", type=int, default=700, help="about the inceptionv1 job")
    parser.add_argument("--only", choices=("scheduling", "manifest"))
    args = parser.parse_args()
    if args.only != "manifest":
        measure_scheduling(args.units, args.workers)
    if args.only != "scheduling":
        measure_manifest(args.manifest_units)


if __name__ == "__main__":
    main()
