"""Ray overhead and memory: the demo job's units under ``run_job`` vs the same units in one process.

Each mode runs in a fresh interpreter (this file with ``--mode``) so that its peak RSS is its
own; the parent alternates the modes and takes medians:
- ``inprocess``: ``run_job`` on the demo job with its executor swapped for one that loads the
  model once and calls ``run_unit`` on each unit here: the same driver logic, minus Ray;
- ``ray``: start the local Ray cluster (timed on its own: cluster start-up), then ``run_job``
  (worker start and model load included) while a thread polls the RSS of the worker actors.

    python scripts/bench_ray.py --steps 2 --repeats 1
    python scripts/bench_ray.py --steps 1 --job my-job.toml    # another job, reduced the same way
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

from bench_common import median, peak_rss_mib

WORKER_TITLE = "ray::UnitWorker"


DEMO = Path(str(resources.files("atlas") / "jobs" / "demo.toml"))


def demo_spec(out: Path, steps: int, job: Path = DEMO):
    """The job (the packaged demo by default) with ``steps`` optimization steps, writing to ``out``."""
    from atlas.plan.spec import load_spec

    spec = load_spec(job)
    return spec.replace(out=out, render=replace(spec.render, steps=steps))


class InProcessExecutor:
    """Stands in for ``atlas.run.executor.Executor``: the same units, run here one after another.

    ``run_job`` keeps all of its driver logic (planning, skipping, merging the scans, writing the
    store); only where the units run changes, so the two timings differ by Ray alone.
    """

    def __init__(self, spec) -> None:
        from atlas.run.worker import make_context

        self.context = make_context(spec)

    def run(self, units, store, on_progress=None, result=None):
        from atlas.run.report import JobResult
        from atlas.run.worker import run_unit

        report = result if result is not None else JobResult()
        for unit in units:
            unit_start = time.perf_counter()
            tables = run_unit(self.context, unit)
            store.write_unit_tables(
                unit.key,
                unit.kind,
                unit.layer,
                tables,
                unit.channels,
                seconds=time.perf_counter() - unit_start,
            )
            report.done += 1
            if on_progress:
                on_progress(unit, "done")
        return report

    def shutdown(self) -> None:
        self.context = None


def run_in_process(out: Path, steps: int, job: Path = DEMO) -> dict[str, float]:
    """``run_job`` on the demo with every unit run in this process instead of on Ray."""
    import atlas.run.executor
    from atlas.run.job import run_job

    atlas.run.executor.Executor = InProcessExecutor
    start = time.perf_counter()
    result = run_job(demo_spec(out, steps, job), build=False)
    seconds = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"the demo job failed in process: {result.failed}")
    return {"seconds": seconds, "units": result.done, "peak_rss_mib": peak_rss_mib()}


class WorkerMemory:
    """Polls the RSS of this process's Ray worker actors (its descendants) in the background."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_mib: dict[int, float] = {}
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            for process in self._me.children(recursive=True):
                try:
                    if " ".join(process.cmdline()).startswith(WORKER_TITLE):
                        rss = process.memory_info().rss / 2**20
                        self.peak_mib[process.pid] = max(rss, self.peak_mib.get(process.pid, 0.0))
                except psutil.Error:
                    continue  # it exited between the listing and the read
            self._stop.wait(self._interval)


def run_on_ray(out: Path, steps: int, job: Path = DEMO) -> dict[str, object]:
    """Start the local cluster, then ``run_job`` the demo (no site build) and watch the workers."""
    import ray

    from atlas.run.executor import connect
    from atlas.run.job import run_job

    spec = demo_spec(out, steps, job)
    start = time.perf_counter()
    connect(spec.execute)
    startup = time.perf_counter() - start
    try:
        with WorkerMemory() as memory:
            start = time.perf_counter()
            result = run_job(spec, build=False)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    if not result.ok:
        raise RuntimeError(f"the demo job failed under Ray: {result.failed}")
    return {
        "seconds": seconds,
        "cluster_start_seconds": startup,
        "units": result.done,
        "driver_peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": sorted(memory.peak_mib.values(), reverse=True),
    }


def _child(mode: str, steps: int, job: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, __file__, "--mode", mode, "--steps", str(steps), "--job", str(job)]
        command += ["--out", tmp]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench_ray.py --mode {mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(steps: int, repeats: int, job: Path = DEMO) -> dict[str, object]:
    """Alternate in-process and Ray runs of the reduced job; medians and the overhead ratio."""
    runs: dict[str, list[dict]] = {"inprocess": [], "ray": []}
    for round_index in range(repeats):
        order = ["inprocess", "ray"] if round_index % 2 == 0 else ["ray", "inprocess"]
        for mode in order:
            runs[mode].append(_child(mode, steps, job))
    in_process = median([r["seconds"] for r in runs["inprocess"]])
    on_ray = median([r["seconds"] for r in runs["ray"]])
    return {
        "steps": steps,
        "repeats": repeats,
        "units": runs["inprocess"][0]["units"],
        "in_process_seconds": in_process,
        "ray_job_seconds": on_ray,
        "cluster_start_seconds": median([r["cluster_start_seconds"] for r in runs["ray"]]),
        "overhead": on_ray / in_process - 1,
        "in_process_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["inprocess"]),
        "driver_peak_rss_mib": max(r["driver_peak_rss_mib"] for r in runs["ray"]),
        "worker_peak_rss_mib": max(max(r["worker_peak_rss_mib"], default=0.0) for r in runs["ray"]),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2, help="render steps of the reduced demo")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--job", type=Path, default=DEMO, help="job spec to run (default: the demo)")
    parser.add_argument("--mode", choices=("inprocess", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "inprocess":
        print(json.dumps(run_in_process(args.out, args.steps, args.job)))
    elif args.mode == "ray":
        print(json.dumps(run_on_ray(args.out, args.steps, args.job)))
    else:
        print(json.dumps(compare(args.steps, args.repeats, args.job), indent=2))


if __name__ == "__main__":
    main()
