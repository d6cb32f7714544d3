"""What the job's driver does for a unit kind beyond handing its units to the executor.

Most kinds need nothing: their pending units go to the workers. A kind whose units run their own
way registers it here, by kind name, beside the rest of the run stage (this is the only code of the
job that knows such kinds; atlas.run.job loops over these tables):

- `RUNNERS`: the kind's pending units are run by this function instead of the executor (the
  dataset-shard scans stream through Ray Data; they run first, alone on the cluster);
- `INPUTS`: the kind's pending units get their `inputs` from this function first (the examples
  units read the merged partial scans of their layer);
- `STAGES`: a stage after the merge phase, which plans and runs units as it computes (the
  activation atlases; the trust units, which judge stored pictures against stored examples). `announced` gives the units it knows before it runs, for progress totals
  and `atlas status`; `run` returns the keys it owns (retention keeps them). The renders of the layers
  that visualize their densest channels are such a stage: the examples' histograms rank them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from atlas.core.registry import Registry
from atlas.kinds.examples import PartialScan, direction_layer
from atlas.plan.kinds import PlanInputs
from atlas.plan.spec import Densest
from atlas.plan.units import ModelFacts, Plan, Unit, plan_phase
from atlas.run.driver import Driver

if TYPE_CHECKING:
    from atlas.data.source import ImageSource
    from atlas.models import LoadedModel
    from atlas.plan.spec import JobSpec
    from atlas.store.store import Store


@dataclass
class Prepared:
    """A checked job with its plan, ready to run or to report on."""

    spec: JobSpec
    model: LoadedModel
    facts: ModelFacts
    plan: Plan
    source: ImageSource | None = None  # the dataset, opened once: the Ray Data scan reads it


# (runner, prepared job, the kind's pending units) -> None
Runner = Callable[[Driver, Prepared, Sequence[Unit]], None]
# (runner, prepared job, the kind's pending units, finished keys by kind) -> the units with inputs
Inputs = Callable[[Driver, Prepared, Sequence[Unit], dict[str, tuple[str, ...]]], list[Unit]]


@dataclass(frozen=True)
class Stage:
    after: tuple[str, ...]  # the first-phase kinds it reads: it is planned once they are all stored
    announced: Callable[[Prepared, Store], list[Unit]]
    run: Callable[[Driver, Prepared, dict[str, tuple[str, ...]]], set[str]]


RUNNERS: Registry[Runner] = Registry("unit runner")
INPUTS: Registry[Inputs] = Registry("unit inputs")
STAGES: Registry[Stage] = Registry("job stage")


def _run_scans(driver: Driver, prepared: Prepared, units: Sequence[Unit]) -> None:
    from atlas.run.scans import run_scans

    input_size = prepared.model.input_size
    run_scans(driver.spec, prepared.source, units, driver.store, input_size, driver.result, driver.tick)


def merged_scan(spec: JobSpec, store: Store, scan_keys: tuple[str, ...]) -> PartialScan:
    """Merge every dataset shard's partial result, read back from the store, on the cluster."""
    from atlas.run.executor import connect
    from atlas.run.scans import tree_merge

    connect(spec.execute)
    return tree_merge(store, scan_keys)


def layer_scan(merged: PartialScan, unit: Unit) -> PartialScan:
    """The part of the merged scan an examples unit reads: its layer (and that layer's directions)."""
    names = [unit.layer] + ([direction_layer(unit.layer)] if unit.work.with_directions else [])
    return merged.select(names)


def _merged_inputs(
    driver: Driver, prepared: Prepared, units: Sequence[Unit], finished: dict[str, tuple[str, ...]]
) -> list[Unit]:
    merged = merged_scan(driver.spec, driver.store, finished.get("scan", ()))
    return [replace(unit, inputs=layer_scan(merged, unit)) for unit in units]


def _atlas_announced(prepared: Prepared, store: Store) -> list[Unit]:
    """The activation-atlas units known before the stage runs (icons of stored grids only)."""
    if not prepared.spec.activation_atlas.layers:
        return []
    from atlas.kinds.actatlas.stage import planned_units

    return planned_units(prepared.spec, prepared.facts.digest, store, prepared.plan.by_kind("scan"))


def _atlas_run(driver: Driver, prepared: Prepared, finished: dict[str, tuple[str, ...]]) -> set[str]:
    """The activation atlases of the finished scans; returns the keys the stage owns."""
    spec = prepared.spec
    done = set(finished.get("scan", ()))
    scans = [unit for unit in prepared.plan.by_kind("scan") if unit.key in done]
    if not spec.activation_atlas.layers or not scans:
        return set()
    from atlas.kinds.actatlas.stage import run_atlas

    context = (prepared.model, prepared.source)
    return run_atlas(spec, prepared.facts.digest, driver.store, scans, driver, context)


def _trust_units(
    prepared: Prepared,
    finished: dict[str, tuple[str, ...]],
    store: Store | None = None,
    densest: Sequence[Unit] = (),
) -> list[Unit]:
    """The trust units of the `finished` render units and the `densest` renders (planned after
    the scan), against the examples units planned from `finished` (only those stored in `store`,
    when given)."""
    if not prepared.spec.examples.enabled or prepared.source is None:
        return []
    from atlas.kinds.trust import trust_units

    done = set(finished.get("render", ()))
    renders = [unit for unit in prepared.plan.by_kind("render") if unit.key in done] + list(densest)
    merged = plan_phase("merge", prepared.spec, prepared.facts, PlanInputs(finished=finished))
    examples = [unit for unit in merged if unit.kind == "examples"]
    if store is not None:
        missing = set(store.pending([unit.key for unit in examples]))
        examples = [unit for unit in examples if unit.key not in missing]
    return trust_units(
        prepared.spec, prepared.facts.digest, prepared.model, prepared.source, renders, examples
    )


def _trust_announced(prepared: Prepared, store: Store) -> list[Unit]:
    """Every trust unit the job will have once its renders and examples are all stored: their keys
    are known from the plan, so the progress total counts them from the start."""
    return _trust_units(prepared, prepared.plan.keys(), densest=_densest_announced(prepared, store))


def _trust_run(driver: Driver, prepared: Prepared, finished: dict[str, tuple[str, ...]]) -> set[str]:
    """Judge the stored pictures against their channels' stored top examples; returns the keys."""
    from atlas.kinds.trust import read_inputs

    densest = _densest_renders(prepared, finished, driver.store)  # run by the stage before this one
    missing = set(driver.store.pending([unit.key for unit in densest]))
    stored = [unit for unit in densest if unit.key not in missing]
    units = _trust_units(prepared, finished, driver.store, stored)
    driver.execute([read_inputs(driver.store, unit) for unit in driver.pending(units)])
    return {unit.key for unit in units}


def _densest_renders(prepared: Prepared, finished: dict[str, tuple[str, ...]], store: Store) -> list[Unit]:
    """The render units of the `visualize = "densest:N"` layers, once the examples planned from
    the `finished` scans hold the density of every channel of the layer."""
    from atlas.kinds.examples.units import stored_density
    from atlas.kinds.render import densest_units

    spec, facts = prepared.spec, prepared.facts
    if not any(isinstance(layer.visualize, Densest) for layer in spec.layers):
        return []
    examples = plan_phase("merge", spec, facts, PlanInputs(finished=finished))
    return densest_units(spec, facts, stored_density(store, examples))


def _densest_announced(prepared: Prepared, store: Store) -> list[Unit]:
    """The densest layers' renders, known once their layer's examples are stored."""
    return _densest_renders(prepared, prepared.plan.keys(), store)


def densest_left(prepared: Prepared, store: Store) -> list[Unit]:
    """The densest layers' renders left to compute, for `atlas plan`'s estimate: those known from
    stored examples that are not stored yet, and stand-ins of the same size for the layers whose
    channels the scan has yet to rank (atlas.kinds.render.densest_stand_ins)."""
    from atlas.kinds.render import densest_stand_ins

    known = _densest_announced(prepared, store)
    ranked = {unit.layer for unit in known}
    later = [unit for unit in densest_stand_ins(prepared.spec, prepared.facts) if unit.layer not in ranked]
    left = set(store.pending([unit.key for unit in known]))
    return [unit for unit in known if unit.key in left] + later


def _densest_run(driver: Driver, prepared: Prepared, finished: dict[str, tuple[str, ...]]) -> set[str]:
    """Render the densest channels of the layers that ask for them; returns the keys."""
    units = _densest_renders(prepared, finished, driver.store)
    driver.execute(driver.pending(units))
    return {unit.key for unit in units}


RUNNERS.register("scan", _run_scans)
INPUTS.register("examples", _merged_inputs)
STAGES.register("activation atlas", Stage(("scan",), _atlas_announced, _atlas_run))
STAGES.register("densest renders", Stage(("scan",), _densest_announced, _densest_run))
STAGES.register("trust", Stage(("render", "scan"), _trust_announced, _trust_run))  # densest ones too
