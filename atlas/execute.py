"""Execution on Ray: long-lived worker actors, bounded calls in flight, retries, one writer.

This is the only module that knows Ray. Workers are actors that load the model once (a GPU
task gets a fresh process per call otherwise). The driver keeps at most `max_in_flight` calls
outstanding, writes each finished unit to the store as it arrives (so a crash loses only
unfinished units), replaces workers that die and retries their units.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ray
from ray.exceptions import RayError, RayTaskError

from atlas.plan import Unit
from atlas.spec import ExecuteSpec, JobSpec
from atlas.store import Store
from atlas.units import UnitFailed, make_context, run_unit


class ExecuteError(RuntimeError):
    """The cluster cannot run the job as asked (e.g. GPUs requested but none present)."""


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    cpus: float
    gpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


@dataclass
class RunReport:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (unit label, reason)
    retried: int = 0
    seconds: float = 0.0

    def add(self, other: RunReport) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed
        self.retried += other.retried
        self.seconds += other.seconds


def connect(execute: ExecuteSpec) -> None:
    """Join the cluster named by the spec or RAY_ADDRESS (as under `ray job submit`), else start one."""
    if ray.is_initialized():
        return
    address = execute.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)


def plan_workers(execute: ExecuteSpec, resources: dict[str, float]) -> WorkerPlan:
    """How many workers and what each holds, from the spec and what the cluster has."""
    total_gpus = float(resources.get("GPU", 0))
    total_cpus = float(resources.get("CPU", 1))
    if execute.gpus_per_worker == "auto":
        gpus = 1.0 if total_gpus >= 1 else 0.0
    else:
        gpus = float(execute.gpus_per_worker)
    if gpus > 0 and total_gpus < gpus:
        raise ExecuteError(
            f"the job asks for {gpus:g} GPU(s) per worker but the cluster has {total_gpus:g}; "
            'set execute.gpus_per_worker = 0 (CPU) or "auto", or add GPU nodes'
        )
    if isinstance(execute.workers, int):
        count = execute.workers
    elif gpus > 0:
        count = max(1, int(total_gpus // gpus))
    else:
        count = max(1, int(total_cpus // 2))  # two cores each: torch's intra-op threads use them
    cpus = 1.0 if gpus > 0 else max(1.0, float(int(total_cpus // count)))
    if gpus == 0 and cpus * count > total_cpus:
        cpus = max(0.5, total_cpus / count)
    return WorkerPlan(count=count, cpus=cpus, gpus=gpus)


@ray.remote
class UnitWorker:
    """Holds the model for the whole job and runs units one after another."""

    def __init__(self, spec: JobSpec, device: str):
        import torch

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(assigned)))
        self.context = make_context(spec, device)

    def run(self, unit: Unit) -> tuple[dict, float]:
        start = time.perf_counter()
        tables = run_unit(self.context, unit)
        return tables, time.perf_counter() - start

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Call:
    unit: Unit
    worker: ray.actor.ActorHandle
    attempt: int


class Executor:
    """Runs units on a pool of UnitWorker actors and streams results into the store."""

    def __init__(self, spec: JobSpec, workers: WorkerPlan | None = None):
        connect(spec.execute)
        self.spec = spec
        self.workers_plan = workers or plan_workers(spec.execute, ray.cluster_resources())
        self.workers: list[ray.actor.ActorHandle] = [
            self._new_worker() for _ in range(self.workers_plan.count)
        ]

    def _new_worker(self) -> ray.actor.ActorHandle:
        plan = self.workers_plan
        return UnitWorker.options(num_cpus=plan.cpus, num_gpus=plan.gpus).remote(self.spec, plan.device)

    def worker_pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []

    def run(
        self,
        units: Sequence[Unit],
        store: Store,
        force: bool = False,
        on_progress: Callable[[Unit, str], None] | None = None,
    ) -> RunReport:
        """Run every unit not already in the store; return what happened."""
        report = RunReport()
        start = time.perf_counter()
        pending: deque[tuple[Unit, int]] = deque()
        for unit in units:
            if not force and store.has(unit.key):
                report.skipped += 1
                if on_progress:
                    on_progress(unit, "skipped")
            else:
                pending.append((unit, 1))
        limit = self.spec.execute.max_in_flight or 2 * len(self.workers)
        in_flight: dict[ray.ObjectRef, _Call] = {}
        load: dict[int, int] = {id(w): 0 for w in self.workers}

        def submit() -> None:
            while pending and len(in_flight) < limit:
                unit, attempt = pending.popleft()
                worker = min(self.workers, key=lambda w: load[id(w)])
                load[id(worker)] += 1
                in_flight[worker.run.remote(unit)] = _Call(unit, worker, attempt)

        submit()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            call = in_flight.pop(ready[0])
            load[id(call.worker)] = load.get(id(call.worker), 1) - 1
            outcome = self._collect(ready[0], call, store, report, pending, load)
            if on_progress and outcome != "retry":
                on_progress(call.unit, outcome)
            submit()
        report.seconds = time.perf_counter() - start
        return report

    def _collect(
        self,
        ref: ray.ObjectRef,
        call: _Call,
        store: Store,
        report: RunReport,
        pending: deque,
        load: dict[int, int],
    ) -> str:
        unit = call.unit
        try:
            tables, seconds = ray.get(ref)
        except UnitFailed as err:  # deterministic: record it, do not retry
            store.record_failure(unit.key, unit.kind, unit.layer, _reason(err), unit.channels, call.attempt)
            report.failed.append((unit.label, _reason(err)))
            return "failed"
        except RayError as err:
            if isinstance(err, RayTaskError) and not _is_system_failure(err):
                reason = _reason(err)
            else:  # the worker died (killed, OOM, node lost): replace it, retry the unit
                self._replace(call.worker, load)
                reason = f"worker lost: {type(err).__name__}"
            if call.attempt <= self.spec.execute.retries:
                report.retried += 1
                pending.append((unit, call.attempt + 1))
                return "retry"
            store.record_failure(unit.key, unit.kind, unit.layer, reason, unit.channels, call.attempt)
            report.failed.append((unit.label, reason))
            return "failed"
        store.write_unit_tables(
            unit.key, unit.kind, unit.layer, tables, unit.channels, attempts=call.attempt, seconds=seconds
        )
        report.done += 1
        return "done"

    def _replace(self, worker: ray.actor.ActorHandle, load: dict[int, int]) -> None:
        if worker not in self.workers:
            return  # already replaced by an earlier failed call
        index = self.workers.index(worker)
        ray.kill(worker, no_restart=True)
        self.workers[index] = self._new_worker()
        load[id(self.workers[index])] = 0


def _is_system_failure(err: RayTaskError) -> bool:
    return isinstance(err.cause, ray.exceptions.RayError | MemoryError | SystemExit)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return text[-1] if text else type(err).__name__
