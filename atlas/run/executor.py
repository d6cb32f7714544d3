"""Execution on Ray: long-lived worker actors, bounded calls in flight, retries, one committer.

This is the only module that knows Ray. Workers are actors that load the model once (a GPU
task gets a fresh process per call otherwise). When they can reach the store (a bucket, or a
local folder on a one-machine cluster) they stage their own shards in it (under dot names) and
return only the small records; otherwise they return the tables and the driver writes them.
The driver keeps at most `max_in_flight` calls outstanding, commits each finished unit as it
arrives (so a crash loses only uncommitted units), replaces workers that die and retries their units.

Work goes only to workers whose actor has started. A replacement that cannot be placed (its
node is gone and the others are full) then costs nothing: the live workers take the work, and
the job fails with a clear message only when no worker at all can run for `start_timeout` s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from atlas.core.errors import AtlasError
from atlas.plan.spec import ExecuteSpec, JobSpec
from atlas.plan.units import Unit
from atlas.run.autoscale import GPUS
from atlas.run.report import JobResult
from atlas.run.worker import UnitFailed, WorkerCalls, make_context
from atlas.store.location import Location, check_uri, open_location
from atlas.store.store import Store, UnitRecord, write_shards

# How long the driver waits for a first live worker before it gives up (model load included).
DEFAULT_START_TIMEOUT_S = 600.0
# How often the driver wakes up while waiting, to notice that no worker can start.
_POLL_S = 1.0


# Render units per call to a GPU worker ("auto"): 16 units of the appendix (8 channels x 7
# images each) fill a physical batch of ~900 images, near the H200's best (DEFAULT_CAP).
RENDER_UNITS_PER_GPU_CALL = 16


# A worker whose node goes away before it starts is replaced, but only this many times per worker:
# a node type that always vanishes must stop the job, not replace workers in a tight loop.
MAX_LOST_BEFORE_START_PER_WORKER = 5


class ExecuteError(AtlasError, RuntimeError):
    """The cluster cannot run the job as asked (e.g. GPUs requested but none present)."""


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    cpus: float
    gpus: float

    @property
    def device(self) -> str:
        """A GPU worker takes CUDA when its process sees a device; a GPU that Ray only counts
        (a fake GPU resource in tests) leaves it on the CPU."""
        return "auto" if self.gpus > 0 else "cpu"

    def units_per_call(self, execute: ExecuteSpec) -> int:
        """Render units sent to a worker in one call: the spec's number, else many on a GPU."""
        if execute.units_per_call != "auto":
            return int(execute.units_per_call)
        return RENDER_UNITS_PER_GPU_CALL if self.gpus > 0 else 1

    def describe(self) -> str:
        """E.g. '4 workers x 1 GPU' for logs and summaries."""
        each = f"{self.gpus:g} GPU" if self.gpus > 0 else f"{self.cpus:g} CPU"
        return f"{self.count} worker{'s' if self.count != 1 else ''} x {each}"


def connect(execute: ExecuteSpec) -> None:
    """Join the cluster named by the spec or RAY_ADDRESS (as under `ray job submit`), else start one."""
    if ray.is_initialized():
        return
    address = execute.address or os.environ.get("RAY_ADDRESS")
    if not address:
        # Ray starts workers at niceness 15; on a laptop the atlas workers *are* the job, and at 15
        # any other busy process (a browser, a build) slows them several times over.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        return
    where = "execute.address" if execute.address else "RAY_ADDRESS"
    check_address(address, where)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ValueError, ConnectionError, RayError) as err:
        raise ExecuteError(
            f"cannot join the Ray cluster at {address} ({where}): {_last_line(err)}. If the cluster uses "
            "token authentication, set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (docs/CLUSTER.md)"
        ) from err


def check_address(address: str, where: str, timeout: float = 5.0) -> None:
    """Fail fast on addresses a driver cannot join; Ray itself waits minutes on an unreachable one."""
    check_uri(address, where)  # never repeat a credential written into the address
    if address.startswith(("http://", "https://")):
        raise ExecuteError(
            f"{where} is {address}, a dashboard URL: `ray job submit` takes that, but a driver joins "
            "the head's GCS address (e.g. 10.0.0.5:6379). Submit with scripts/submit.sh, set the GCS "
            "address, or unset it to run on a local Ray"
        )
    host, _, port = address.rpartition(":")
    if address == "auto" or address.startswith("ray://") or not port.isdigit():
        return  # Ray resolves "auto" from this node; Ray Client addresses are checked by Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ExecuteError(
            f"nothing answers at {address} ({where}): {err.strerror or err}. Start the head "
            "(`ray start --head`), fix the address, or unset it to run on a local Ray"
        ) from err


def plan_workers(
    execute: ExecuteSpec,
    resources: Mapping[str, float],
    node_resources: Sequence[Mapping[str, float]] = (),
) -> WorkerPlan:
    """How many workers and what each holds, from the spec and what the cluster has.

    `resources` is the cluster total; `node_resources` (one mapping per live node) keeps a
    worker from asking for more than any single node has, which Ray would wait for forever.
    """
    total_gpus = float(resources.get("GPU", 0))
    total_cpus = float(resources.get("CPU", 1))
    node_gpus = max((float(n.get("GPU", 0)) for n in node_resources), default=total_gpus)
    node_cpus = max((float(n.get("CPU", 0)) for n in node_resources), default=total_cpus)
    if execute.gpus_per_worker == "auto":
        gpus = 1.0 if node_gpus >= 1 else 0.0
    else:
        gpus = float(execute.gpus_per_worker)
    if gpus > 0 and node_gpus < gpus:
        raise ExecuteError(
            f"the job asks for {gpus:g} GPU(s) per worker but the cluster has {total_gpus:g} "
            f"(at most {node_gpus:g} on one node); set execute.gpus_per_worker = 0 (CPU) or "
            '"auto", or add GPU nodes (a GPU node type in cluster.yaml, then `ray up`)'
        )
    if gpus > 0 and node_cpus < 1:
        raise ExecuteError("every GPU worker needs one CPU but no node offers one; give the GPU nodes CPUs")
    if isinstance(execute.workers, int):
        count = execute.workers
    elif gpus > 0:
        count = max(1, int(total_gpus // gpus))
    else:
        count = max(1, int(total_cpus // 2))  # two cores each: torch's intra-op threads use them
    if gpus > 0:
        return WorkerPlan(count=count, cpus=1.0, gpus=gpus)
    cpus = max(1.0, float(int(total_cpus // count)))
    if cpus * count > total_cpus:
        cpus = max(0.5, total_cpus / count)
    return WorkerPlan(count=count, cpus=min(cpus, max(node_cpus, 0.5)), gpus=0.0)


def cluster_worker_plan(execute: ExecuteSpec) -> WorkerPlan:
    """plan_workers for the cluster this process is connected to (live nodes only), once the
    autoscaler has added the GPU nodes the job needs, if it can."""
    GPUS.ensure(execute)
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return plan_workers(execute, ray.cluster_resources(), nodes)


def workers_write(store: Store) -> bool:
    """Whether workers can write shards to the store themselves (else they return tables).

    A bucket is reachable from every node; a local folder only when the cluster is this one
    machine (a shared file system on several nodes cannot be told from a local disk, so the
    driver writes there).
    """
    if not store.location.local:
        return True
    return len([node for node in ray.nodes() if node.get("Alive")]) <= 1


# Calls a GPU worker runs at once: while one call's host-side work finishes (PNG encoding, tables,
# shard writes), the next one, already queued by the driver, optimizes; the accelerator runs one
# call's units at a time (atlas.run.worker.WorkerCalls).
CALLS_AT_ONCE_PER_GPU_WORKER = 2


@ray.remote
class UnitWorker:
    """Holds the model for the whole job and runs units, one call's on the device at a time."""

    def __init__(self, spec: JobSpec, device: str):
        import torch

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(assigned)))
        self.calls = WorkerCalls(make_context(spec, device))
        self.locations: dict[str, Location] = {}

    def _staged(self, store_uri: str, key: str, tables: dict) -> dict:
        if store_uri not in self.locations:
            self.locations[store_uri] = open_location(store_uri)
        return write_shards(self.locations[store_uri], key, tables)

    def run(self, unit: Unit, inputs: Any = None, store_uri: str | None = None) -> tuple[str, dict, float]:
        """Run one unit; `inputs` arrives separately so that units sharing it ship it once.

        With a `store_uri` the worker stages the shards itself and returns ("shards", their
        records, seconds); else ("tables", the tables, seconds) for the driver to write.
        Credentials for a bucket come from this node's own environment, never from the driver.
        """
        unit = replace(unit, inputs=inputs)
        [tables], start = self.calls.outcomes([unit])
        if isinstance(tables, UnitFailed):
            raise tables
        if store_uri is None:
            return "tables", tables, time.perf_counter() - start
        return "shards", self._staged(store_uri, unit.key, tables), time.perf_counter() - start

    def run_many(self, units: list[Unit], store_uri: str | None = None) -> list[tuple[str, Any, float]]:
        """Several units (no inputs) in one call, render units optimized together
        (``atlas.run.worker.start_units``): per unit what ``run`` returns, or ("failed", reason, seconds).
        A unit's seconds are the call's, shared out by its share of the units."""
        outcomes, start = self.calls.outcomes(units)
        results: list[tuple[str, Any]] = []
        for unit, outcome in zip(units, outcomes, strict=True):
            if isinstance(outcome, UnitFailed):
                results.append(("failed", str(outcome)))
            elif store_uri is None:
                results.append(("tables", outcome))
            else:
                results.append(("shards", self._staged(store_uri, unit.key, outcome)))
        share = (time.perf_counter() - start) / max(len(units), 1)
        return [(form, output, share) for form, output in results]

    def pid(self) -> int:
        return os.getpid()


@dataclass(eq=False)
class _Worker:
    """One actor as the driver sees it: started yet, and how many calls it holds."""

    handle: ray.actor.ActorHandle
    started: ray.ObjectRef  # resolves to the pid once the model is loaded
    pid: int | None = None
    load: int = 0
    lost: bool = False


@dataclass
class _Call:
    unit: Unit
    worker: _Worker
    attempt: int
    # Render units packed into the same call (unit is the first); empty for a one-unit call.
    packed: tuple[tuple[Unit, int], ...] = ()


class Executor:
    """Runs units on a pool of UnitWorker actors and streams results into the store."""

    def __init__(
        self,
        spec: JobSpec,
        workers: WorkerPlan | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
    ):
        connect(spec.execute)
        self.spec = spec
        self.start_timeout = start_timeout
        self.workers_plan = workers or cluster_worker_plan(spec.execute)
        self.workers: list[_Worker] = [self._new_worker() for _ in range(self.workers_plan.count)]
        self._lost_before_start = 0  # workers whose node went away before they started
        self._store_uri: str | None = None  # where workers stage shards in the current run, if they can

    def _new_worker(self) -> _Worker:
        plan = self.workers_plan
        at_once = CALLS_AT_ONCE_PER_GPU_WORKER if plan.gpus > 0 else 1
        handle = UnitWorker.options(num_cpus=plan.cpus, num_gpus=plan.gpus, max_concurrency=at_once).remote(
            self.spec, plan.device
        )
        return _Worker(handle, handle.pid.remote())

    def worker_pids(self, timeout: float | None = None) -> list[int]:
        """Process ids of the live workers, waiting for them to start (for tests and debugging)."""
        pids = ray.get([w.started for w in self.workers if not w.lost], timeout=timeout)
        for worker, pid in zip([w for w in self.workers if not w.lost], pids, strict=True):
            worker.pid = pid
        return pids

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker.handle)
        self.workers = []

    def run(
        self,
        units: Sequence[Unit],
        store: Store,
        on_progress: Callable[[Unit, str], None] | None = None,
        result: JobResult | None = None,
    ) -> JobResult:
        """Run every unit given (what is left to do is the caller's question); count into `result`.

        `on_progress(unit, outcome)` is called once per unit with "done" or "failed".
        """
        result = result if result is not None else JobResult()
        pending: deque[tuple[Unit, int]] = deque((unit, 1) for unit in units)
        limit = self.spec.execute.max_in_flight or 2 * len(self.workers)
        self._store_uri = store.uri if workers_write(store) else None
        in_flight: dict[ray.ObjectRef, _Call] = {}
        shipped: dict[int, tuple[Any, ray.ObjectRef]] = {}  # id(inputs) -> (inputs, its object ref)
        last_live = time.monotonic()

        while pending or in_flight:
            self._submit(pending, in_flight, limit, shipped)
            starting = {w.started: w for w in self.workers if w.pid is None and not w.lost}
            ready, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=_POLL_S)
            for ref in ready:
                if ref in starting:
                    self._started(starting[ref])
                    continue
                call = in_flight.pop(ref)
                call.worker.load -= 1
                if call.packed:
                    outcomes = self._collect_packed(ref, call, store, result, pending)
                else:
                    outcomes = [(call.unit, self._collect(ref, call, store, result, pending))]
                for unit, outcome in outcomes:
                    if on_progress and outcome != "retry":
                        on_progress(unit, outcome)
            if any(w.pid is not None and not w.lost for w in self.workers) or in_flight:
                last_live = time.monotonic()
            elif time.monotonic() - last_live > self.start_timeout:
                raise ExecuteError(self._no_worker_message())
        return result

    def _submit(
        self,
        pending: deque,
        in_flight: dict[ray.ObjectRef, _Call],
        limit: int,
        shipped: dict[int, tuple[Any, ray.ObjectRef]],
    ) -> None:
        """Hand pending units to the least busy started workers, up to `limit` calls in flight.

        A unit's `inputs` (e.g. the merged dataset scan that every examples unit reads) goes into
        the object store once and travels as a reference, not once per call.
        """
        live = [w for w in self.workers if w.pid is not None and not w.lost]
        per_call = self.workers_plan.units_per_call(self.spec.execute)
        while pending and live and len(in_flight) < limit:
            unit, attempt = pending.popleft()
            worker = min(live, key=lambda w: w.load)
            worker.load += 1
            if per_call > 1 and unit.kind == "render" and unit.inputs is None:
                packed = [(unit, attempt)]
                while pending and len(packed) < per_call and _packs_with(pending[0][0], unit):
                    packed.append(pending.popleft())
                if len(packed) > 1:
                    units = [replace(u, inputs=None) for u, _ in packed]
                    ref = worker.handle.run_many.remote(units, self._store_uri)
                    in_flight[ref] = _Call(unit, worker, attempt, tuple(packed))
                    continue
            inputs = None
            if unit.inputs is not None:
                if id(unit.inputs) not in shipped:
                    shipped[id(unit.inputs)] = (unit.inputs, ray.put(unit.inputs))
                inputs = shipped[id(unit.inputs)][1]
            ref = worker.handle.run.remote(replace(unit, inputs=None), inputs, self._store_uri)
            in_flight[ref] = _Call(unit, worker, attempt)

    def _started(self, worker: _Worker) -> None:
        """A worker finished loading the model, or failed to: a failed load stops the job."""
        try:
            worker.pid = ray.get(worker.started)
        except RayActorError as err:
            if err.actor_init_failed:
                raise ExecuteError(
                    f"a worker could not load the model: {_last_line(err)}. If it loads on this "
                    "machine, the workers lack the code or files: submit with --working-dir "
                    "(see docs/CLUSTER.md) or install the package on every node"
                ) from err
            self._lost_before_start += 1
            if self._lost_before_start > MAX_LOST_BEFORE_START_PER_WORKER * len(self.workers):
                raise ExecuteError(
                    f"{self._lost_before_start} workers were lost before they started ({_last_line(err)}): "
                    "their nodes keep going away (an autoscaler removing idle nodes too soon, or nodes "
                    "failing at start). Check `ray status` and the autoscaler's idle_timeout_minutes"
                ) from err
            self._replace(worker)  # its node went away before it started

    def _collect(
        self,
        ref: ray.ObjectRef,
        call: _Call,
        store: Store,
        result: JobResult,
        pending: deque,
    ) -> str:
        unit = call.unit
        try:
            form, output, seconds = ray.get(ref)
        except UnitFailed as err:  # deterministic: record it, do not retry
            return self._fail(call, store, result, _reason(err))
        except RayError as err:
            if isinstance(err, RayTaskError) and not _is_system_failure(err):
                reason = _reason(err)
            else:  # the worker died (killed, OOM, node lost): replace it, retry the unit
                self._replace(call.worker)
                reason = f"worker lost: {type(err).__name__}"
            if call.attempt <= self.spec.execute.retries:
                result.retried += 1
                pending.append((unit, call.attempt + 1))
                return "retry"
            return self._fail(call, store, result, reason)
        self._commit(call, store, result, form, output, seconds)
        return "done"

    def _collect_packed(
        self, ref: ray.ObjectRef, call: _Call, store: Store, result: JobResult, pending: deque
    ) -> list[tuple[Unit, str]]:
        """A packed call's outcomes, unit by unit; a lost worker sends each unit back to retry."""
        try:
            outputs = ray.get(ref)
        except RayError as err:
            if not (isinstance(err, RayTaskError) and not _is_system_failure(err)):
                self._replace(call.worker)
            outcomes = []
            for unit, attempt in call.packed:
                one = _Call(unit, call.worker, attempt)
                if attempt <= self.spec.execute.retries:
                    result.retried += 1
                    pending.append((unit, attempt + 1))
                    outcomes.append((unit, "retry"))
                else:
                    outcomes.append((unit, self._fail(one, store, result, _reason(err))))
            return outcomes
        outcomes = []
        for (unit, attempt), (form, output, seconds) in zip(call.packed, outputs, strict=True):
            one = _Call(unit, call.worker, attempt)
            if form == "failed":
                outcomes.append((unit, self._fail(one, store, result, output)))
                continue
            self._commit(one, store, result, form, output, seconds)
            outcomes.append((unit, "done"))
        return outcomes

    @staticmethod
    def _commit(call: _Call, store: Store, result: JobResult, form: str, output: Any, seconds: float) -> None:
        unit = call.unit
        shards = output if form == "shards" else store.write_shards(unit.key, output)
        store.commit(
            UnitRecord.done(unit.key, unit.kind, unit.layer, shards, unit.channels, call.attempt, seconds)
        )
        result.done += 1

    @staticmethod
    def _fail(call: _Call, store: Store, result: JobResult, reason: str) -> str:
        unit = call.unit
        store.commit(UnitRecord.failed(unit.key, unit.kind, unit.layer, reason, unit.channels, call.attempt))
        result.failed.append((unit.label, reason))
        return "failed"

    def _replace(self, worker: _Worker) -> None:
        if worker.lost:
            return  # already replaced by an earlier failed call
        worker.lost = True
        with contextlib.suppress(RayError):  # an actor whose creation Ray cancelled cannot be killed
            ray.kill(worker.handle, no_restart=True)
        self.workers[self.workers.index(worker)] = self._new_worker()

    def _no_worker_message(self) -> str:
        plan = self.workers_plan
        free = ray.available_resources()
        return (
            f"no worker could start within {self.start_timeout:g} s: each needs {plan.cpus:g} CPU"
            f"{f' and {plan.gpus:g} GPU' if plan.gpus else ''}, the cluster has "
            f"{free.get('CPU', 0):g} CPU and {free.get('GPU', 0):g} GPU free. Add nodes, lower "
            "execute.workers, or check `ray status`"
        )


def _packs_with(unit: Unit, first: Unit) -> bool:
    """Whether ``unit`` can join ``first``'s packed call: a render unit with the same settings
    and weights (the worker optimizes them together)."""
    return (
        unit.kind == "render"
        and unit.inputs is None
        and unit.work == first.work
        and unit.checkpoint == first.checkpoint
    )


def _is_system_failure(err: RayTaskError) -> bool:
    return isinstance(err.cause, ray.exceptions.RayError | MemoryError | SystemExit)


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return _last_line(err)
