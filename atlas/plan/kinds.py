"""The registry of unit kinds: what each kind of unit is, registered beside its implementation.

A kind's module (under atlas/kinds/, or a plugin's) calls `register_kind` once with its work type
(whose `kind` names it and whose `version` enters every content key), the phase in which it is
planned, its planner, the worker handler that computes one unit, its cost model and the tables it
writes. Planning (`atlas.plan.units.make_plan`), the worker dispatch (atlas.run.worker), the job's
phases (atlas.run.job) and the cost estimate (atlas.run.cost) loop over this registry and never
name a kind. Nothing here imports torch or Ray.

Phases, in the order a job runs them:

- ``first``: planned from the spec, the model's facts and the dataset's shards (renders,
  interactions, dataset-shard scans);
- ``merge``: planned from the keys of the ``first`` units that finished (the examples, which
  merge the finished scans);
- ``stage``: planned while a stage of the job runs, by the stage itself (activation-atlas icons,
  whose grids are computed then; a timeline's probes, per checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa

from atlas.core.registry import Registry

Phase = Literal["first", "merge", "stage"]
PHASES: tuple[Phase, ...] = ("first", "merge", "stage")
# A unit's tables by table kind: each a table, or a future of one that the worker's writer thread
# is still building (atlas.kinds.context.WorkerContext.later); the worker waits for it.
Tables = dict[str, pa.Table | Future]
# (worker context, unit, the unit's work) -> the unit's tables
Handler = Callable[[Any, Any, Any], Tables]
# (worker context, units of one kind with equal work) -> each unit's tables, in order
ManyHandler = Callable[[Any, Sequence[Any]], list[Tables]]


class Speed(Protocol):
    """Measured throughput a cost model reads (atlas.run.cost.Throughput)."""

    scan_images_per_s: float
    render_image_steps_per_s: float


# (unit, job spec, measured speed) -> device seconds the unit takes
CostModel = Callable[[Any, Any, Speed], float]


@dataclass(frozen=True)
class PlanInputs:
    """What planners read besides the spec and the model's facts: the dataset's shards with their
    fingerprints (``first``), and the keys of the finished units of earlier phases, by kind."""

    shards: Sequence[Any] = ()
    fingerprints: Sequence[str] = ()
    finished: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# (job spec, model facts, plan inputs) -> the kind's units of its phase
Planner = Callable[[Any, Any, PlanInputs], list[Any]]


@dataclass(frozen=True)
class UnitKind:
    """One kind of unit. `run_many`, when given, computes several units of equal work in one call
    (render chunks of a layer share physical batches), each getting what it would get alone.
    `cost` is None only for kinds that never use a device (a job with a budget refuses others);
    `tables` names the table kinds its units write (atlas.core.schema)."""

    name: str
    work: type
    phase: Phase
    planner: Planner | None
    handler: Handler
    cost: CostModel | None = None
    tables: tuple[str, ...] = ()
    run_many: ManyHandler | None = None
    reads: tuple[str, ...] = ()  # the spec sections its settings come from (to say why it reruns)

    @property
    def version(self) -> str:
        return self.work.version


class KindError(ValueError):
    """A unit kind registered wrongly (a programming error in the kind's module)."""


UNIT_KINDS: Registry[UnitKind] = Registry("unit kind")


def register_kind(
    work: type,
    *,
    phase: Phase,
    handler: Handler,
    planner: Planner | None = None,
    cost: CostModel | None = None,
    tables: Sequence[str] = (),
    run_many: ManyHandler | None = None,
    reads: Sequence[str] = (),
) -> UnitKind:
    """Register the unit kind of work type `work` (its `kind` and `version` class attributes); a
    second registration of a name is an error. Kinds of the ``first`` and ``merge`` phases plan
    their units with `planner`; ``stage`` kinds are planned by the stage that runs them. `reads`
    names the spec sections its settings come from (`atlas plan` and `atlas status` say which of
    their settings changed when its units are to be recomputed)."""
    name, version = getattr(work, "kind", None), getattr(work, "version", None)
    if not isinstance(name, str) or not isinstance(version, str):
        raise KindError(
            f"{work.__name__} needs `kind` and `version` class attributes (str) to be a unit kind"
        )
    if phase not in PHASES:
        raise KindError(f"unit kind {name!r}: phase {phase!r} is not one of {', '.join(PHASES)}")
    if planner is None and phase != "stage":
        raise KindError(f"unit kind {name!r} of phase {phase!r} needs a planner")
    kind = UnitKind(name, work, phase, planner, handler, cost, tuple(tables), run_many, tuple(reads))
    return UNIT_KINDS.register(name, kind)


def kinds_of(phase: Phase) -> list[UnitKind]:
    """The registered kinds of `phase`, in registration order."""
    return [kind for _, kind in UNIT_KINDS.items() if kind.phase == phase]
