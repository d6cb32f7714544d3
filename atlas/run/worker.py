"""Running units inside a worker: dispatch by kind through the registry of unit kinds.

Handlers return Arrow tables keyed by table kind (the columns are documented in the README);
they never write anything themselves, the driver does. Every kind registers itself beside its
implementation (atlas.plan.kinds); importing atlas.kinds registers the built-in ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

import atlas.kinds  # noqa: F401  (registers the built-in unit kinds)
from atlas.core.provenance import provenance, with_provenance
from atlas.kinds.context import UnitFailed, WorkerContext, compile_backend, make_context
from atlas.optvis import RenderError
from atlas.plan.kinds import UNIT_KINDS
from atlas.plan.units import Unit

__all__ = [
    "Outcome",
    "UnitFailed",
    "WorkerContext",
    "compile_backend",
    "make_context",
    "run_unit",
    "run_units",
]

# Failures that retrying will not heal: NaN/Inf, bad inputs.
_DETERMINISTIC = (FloatingPointError, ValueError, RenderError)


def _stamped(ctx: WorkerContext, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    info = provenance(str(ctx.model.device))
    return {kind: with_provenance(table, info) for kind, table in tables.items()}


def run_unit(ctx: WorkerContext, unit: Unit) -> dict[str, pa.Table]:
    """Compute one unit; deterministic failures are raised as UnitFailed with the reason.

    Every table carries the worker's environment (``atlas.core.provenance``) in its metadata.
    """
    if unit.checkpoint is not None:
        ctx = ctx.on_checkpoint(unit.checkpoint)
    try:
        return _stamped(ctx, UNIT_KINDS.get(unit.kind).handler(ctx, unit, unit.work))
    except UnitFailed:
        raise
    except _DETERMINISTIC as err:
        raise UnitFailed(f"{unit.label}: {err}") from err


Outcome = dict[str, pa.Table] | UnitFailed


def run_units(ctx: WorkerContext, units: Sequence[Unit]) -> list[Outcome]:
    """Several units in one worker call, one outcome each (its tables, or why it failed).

    Units of a kind that runs several at once (`run_many`, e.g. render chunks of a layer sharing
    physical batches) and have equal work run together, each getting exactly what it gets alone;
    if the packed run fails (one unit diverges), each of them runs alone so that only the bad one
    fails. Other units run one after another.
    """
    outcomes: dict[int, Outcome] = {}
    groups: dict[Any, list[int]] = {}
    for index, unit in enumerate(units):
        if unit.checkpoint is None and UNIT_KINDS.get(unit.kind).run_many is not None:
            groups.setdefault((unit.kind, unit.work), []).append(index)
    for (kind, _work), members in groups.items():
        if len(members) < 2:
            continue
        try:
            tables = UNIT_KINDS.get(kind).run_many(ctx, [units[i] for i in members])
        except _DETERMINISTIC:
            continue  # each runs alone below: only the unit at fault fails
        for index, unit_tables in zip(members, tables, strict=True):
            outcomes[index] = _stamped(ctx, unit_tables)
    for index, unit in enumerate(units):
        if index not in outcomes:
            try:
                outcomes[index] = run_unit(ctx, unit)
            except UnitFailed as err:
                outcomes[index] = err
    return [outcomes[index] for index in range(len(units))]
