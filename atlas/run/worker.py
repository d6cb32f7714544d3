"""Running units inside a worker: dispatch by kind through the registry of unit kinds.

Handlers return Arrow tables keyed by table kind (the columns are documented in the README),
or futures of the tables the worker's writer thread is still building; they never write
anything themselves, the driver does. Every kind registers itself beside its
implementation (atlas.plan.kinds); importing atlas.kinds registers the built-in ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

import atlas.kinds  # noqa: F401  (registers the built-in unit kinds)
from atlas.core.provenance import provenance, with_provenance
from atlas.kinds.context import UnitFailed, WorkerContext, compile_backend, make_context
from atlas.optvis import RenderError
from atlas.plan.kinds import UNIT_KINDS, Tables
from atlas.plan.units import Unit

__all__ = [
    "Outcome",
    "Pending",
    "UnitFailed",
    "WorkerCalls",
    "WorkerContext",
    "compile_backend",
    "finish_units",
    "make_context",
    "run_unit",
    "run_units",
    "start_units",
]

# Failures that retrying will not heal: NaN/Inf, bad inputs.
_DETERMINISTIC = (FloatingPointError, ValueError, RenderError)


Pending = Tables  # what a handler returns: tables, or futures of the writer thread's tables
Outcome = dict[str, pa.Table] | UnitFailed


def _stamped(ctx: WorkerContext, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    info = provenance(str(ctx.model.device))
    return {kind: with_provenance(table, info) for kind, table in tables.items()}


def _start(ctx: WorkerContext, unit: Unit) -> Pending:
    if unit.checkpoint is not None:
        ctx = ctx.on_checkpoint(unit.checkpoint)
    try:
        return UNIT_KINDS.get(unit.kind).handler(ctx, unit, unit.work)
    except UnitFailed:
        raise
    except _DETERMINISTIC as err:
        raise UnitFailed(f"{unit.label}: {err}") from err


def _finish(ctx: WorkerContext, unit: Unit, pending: Pending | UnitFailed) -> Outcome:
    """A started unit's tables once its host-side work is done; a failure there (an image that
    does not encode, a table that does not build) is this unit's failure, not its companions'."""
    if isinstance(pending, UnitFailed):
        return pending
    tables = {}
    for kind, table in pending.items():
        try:
            tables[kind] = table.result() if isinstance(table, Future) else table
        except Exception as err:  # whatever the writer raised fails this unit only
            return UnitFailed(f"{unit.label}: its {kind} table failed: {type(err).__name__}: {err}")
    return _stamped(ctx, tables)


def run_unit(ctx: WorkerContext, unit: Unit) -> dict[str, pa.Table]:
    """Compute one unit; deterministic failures are raised as UnitFailed with the reason.

    Every table carries the worker's environment (``atlas.core.provenance``) in its metadata.
    """
    outcome = _finish(ctx, unit, _start(ctx, unit))
    if isinstance(outcome, UnitFailed):
        raise outcome
    return outcome


def start_units(ctx: WorkerContext, units: Sequence[Unit]) -> list[Pending | UnitFailed]:
    """The part of ``run_units`` that needs the accelerator: every unit optimized or measured,
    with its host-side work (PNG encoding, tables) handed to the context's writer thread
    (``WorkerContext.later``). ``finish_units`` waits for that work; a worker can start the next
    call's units in between (atlas.run.executor).

    Units of a kind that runs several at once (`run_many`, e.g. render chunks of a layer sharing
    physical batches) and have equal work run together, each getting exactly what it gets alone;
    if the packed run fails (one unit diverges), each of them runs alone so that only the bad one
    fails. Other units run one after another.
    """
    started: dict[int, Pending | UnitFailed] = {}
    groups: dict[Any, list[int]] = {}
    for index, unit in enumerate(units):
        if unit.checkpoint is None and UNIT_KINDS.get(unit.kind).run_many is not None:
            groups.setdefault((unit.kind, unit.work), []).append(index)
    for (kind, _work), members in groups.items():
        if len(members) < 2:
            continue
        try:
            pending = UNIT_KINDS.get(kind).run_many(ctx, [units[i] for i in members])
        except _DETERMINISTIC:
            continue  # each runs alone below: only the unit at fault fails
        started.update(zip(members, pending, strict=True))
    for index, unit in enumerate(units):
        if index not in started:
            try:
                started[index] = _start(ctx, unit)
            except UnitFailed as err:
                started[index] = err
    return [started[index] for index in range(len(units))]


def finish_units(
    ctx: WorkerContext, units: Sequence[Unit], started: Sequence[Pending | UnitFailed]
) -> list[Outcome]:
    """The outcomes of ``start_units``'s units, one each (its tables, or why it failed)."""
    return [_finish(ctx, unit, pending) for unit, pending in zip(units, started, strict=True)]


def run_units(ctx: WorkerContext, units: Sequence[Unit]) -> list[Outcome]:
    """Several units in one worker call, one outcome each: ``start_units``, then ``finish_units``."""
    return finish_units(ctx, units, start_units(ctx, units))


class WorkerCalls:
    """A worker's calls, several at once from the threads of one actor: each call's device work
    (``start_units``) takes the device in turn, and its host work (``finish_units``, then the
    caller's shard writes) runs beside the next call's device work."""

    def __init__(self, ctx: WorkerContext):
        self.context = ctx
        self._device = threading.Lock()

    def outcomes(self, units: Sequence[Unit]) -> tuple[list[Outcome], float]:
        """What ``run_units`` gives, the device held only while the units start; and the
        ``time.perf_counter()`` at which this call took the device (its own time starts there,
        not while it waited for the call before)."""
        with self._device:
            taken = time.perf_counter()
            started = start_units(self.context, units)
        return finish_units(self.context, units, started), taken
