"""Running a whole job: spec -> plan -> store (what is pending) -> execute -> store -> site.

The job runs the phases of the registered unit kinds (atlas.plan.kinds) in order: the ``first``
phase's units (renders, interactions, dataset-shard scans), then the ``merge`` phase's, planned
from the first phase's finished units (the examples), then the stages (the activation atlases).
What a kind needs from the driver beyond the executor is in atlas.run.phases; nothing here names
a kind. Each phase asks the store once what is left to do (checksums included) and hands exactly
that to the executor. Everything is checked before any work starts, and every finished unit is in
the store before the next one is collected.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import atlas.kinds  # noqa: F401  (registers the built-in unit kinds)
from atlas.core.provenance import provenance
from atlas.data.skipped import KIND as SKIPPED
from atlas.data.skipped import count_reasons, read_skipped
from atlas.models import LoadedModel, pick_device
from atlas.models.layout import TOKENS
from atlas.plan.kinds import UNIT_KINDS, PlanInputs
from atlas.plan.spec import JobSpec, LayerSpec, check_against_model, follow_model, spec_to_dict
from atlas.plan.units import ModelFacts, Unit, make_plan, plan_phase
from atlas.run.driver import Driver, checked, writing
from atlas.run.phases import INPUTS, RUNNERS, STAGES, Prepared
from atlas.run.report import JobResult
from atlas.site.columns import atlas_columns, columns_json
from atlas.site.labels import label_counts
from atlas.store.retention import apply_retention
from atlas.store.store import Store, open_store

if TYPE_CHECKING:
    from atlas.data.source import ImageSource, ShardRef

__all__ = ["Prepared", "job_status", "prepare", "run_job"]


def prepare(spec: JobSpec) -> Prepared:
    """Load the model on the driver, check the spec against it, open the data, plan the units."""
    model = spec.model.load()
    if any(layer.derived for layer in spec.layers):
        from atlas.plan.dictionary import attach_layers

        spec = spec.replace(layers=attach_layers(model, spec.layers))
    spec = follow_model(spec, model)
    check_against_model(spec, model)
    facts = ModelFacts(
        model.digest,
        {layer.name: model.channels(layer.name) for layer in spec.layers},
        token_layers(model, [layer.name for layer in spec.layers]),
    )
    source, shards, fingerprints = open_dataset(spec) if spec.examples.enabled else (None, [], [])
    plan = make_plan(spec, facts, shards, fingerprints)
    return Prepared(spec, model, facts, plan, source)


def token_layers(model: LoadedModel, names: list[str]) -> frozenset[str]:
    """The layers among `names` whose outputs are tokens (their render defaults differ)."""
    return frozenset(name for name in names if model.layout(name).kind == TOKENS)


def open_dataset(spec: JobSpec) -> tuple[ImageSource, list[ShardRef], list[str]]:
    """The examples source, its shards and each shard's fingerprint for the scan units' keys."""
    from atlas.data.open import open_source

    source = open_source(spec.examples.source, column=spec.examples.column, labels=spec.examples.label_column)
    shards = source.shards(spec.examples.shard_size)
    whole = source.fingerprint()  # any change to the data rescans: top-k are global
    return source, shards, [f"{whole}:{shard.index}:{len(shard.source_ids)}" for shard in shards]


def job_info(prepared: Prepared, started: str, finished: str | None = None) -> dict:
    spec, model = prepared.spec, prepared.model
    infos = {info.name: info for info in model.layers()}
    layers = []
    for layer in spec.layers:
        info = infos.get(layer.name)
        total = prepared.facts.channels[layer.name]
        layers.append(
            {
                "name": layer.name,
                "channels": list(layer.channels or range(total)),
                "total_channels": total,
                "height": info.height if info else 0,
                "width": info.width if info else 0,
                "layout": info.layout if info else "map",
                **({"names": _direction_names(model, layer)} if layer.dictionary else {}),
                **({"sae": True} if layer.sae else {}),  # its units are an SAE's features
            }
        )
    return {
        "name": spec.name,
        "model": spec.model.name,
        "model_digest": prepared.facts.digest,
        "input_size": model.input_size,
        "input": model_input(model),
        # one name per logit where the model declares them: the site names the classes an SAE
        # feature's logit effects raise and lower
        **({"classes": list(model.class_names)} if model.class_names else {}),
        "layers": layers,
        # ImageFolder datasets (`<label>/<image>`) and Parquet label columns: images per label, for
        # label enrichment on the site
        "labels": label_counts(prepared.source.ids()) if prepared.source is not None else {},
        "spec": spec_to_dict(spec),
        "started": started,
        "finished": finished,
        "renderer_version": UNIT_KINDS.get("render").version,
        "columns": columns_json(atlas_columns()),  # the site's row, from the objective registry
        "provenance": provenance(str(pick_device())),  # this node; each shard names its worker's
    }


def model_input(model: LoadedModel) -> dict:
    """The input the model was run on (job.json; the site's "Settings used"): its side, and the
    mean and std of [0, 1] RGB, each from the spec or as the model declares it."""
    stated = model.stated or {}
    prep = model.preprocessing
    return {
        "size": prep.input_size,
        "mean": [round(float(v), 6) for v in prep.mean],
        "std": [round(float(v), 6) for v in prep.std],
        "from_spec": sorted("size" if k == "input_size" else k for k in stated),
    }


def _direction_names(model: LoadedModel, layer: LayerSpec) -> list[str]:
    """A dictionary layer's K direction names, which the site shows beside the channel numbers."""
    from atlas.plan.dictionary import layer_dictionary

    return list(layer_dictionary(model, layer).names)


def finished_keys(store: Store, units: Sequence[Unit], complete: bool = False) -> dict[str, tuple[str, ...]]:
    """The keys of `units` that are stored, by kind (checked, or written, by their phase). With
    `complete`, only kinds whose every unit is stored: what `atlas status` can plan from."""
    unfinished = set(store.pending([u.key for u in units]))
    by_kind: dict[str, list[str]] = {}
    incomplete = set()
    for unit in units:
        by_kind.setdefault(unit.kind, [])
        if unit.key in unfinished:
            incomplete.add(unit.kind)
        else:
            by_kind[unit.kind].append(unit.key)
    return {k: tuple(v) for k, v in by_kind.items() if not complete or k not in incomplete}


def run_first(driver: Driver, prepared: Prepared, only: tuple[str, ...] | None) -> None:
    """The first phase. Kinds with a runner of their own (atlas.run.phases: the Ray Data scans)
    run first, alone on the cluster (scans and renders never wait on each other's GPUs); the
    others' pending units go to the executor together."""
    units = [u for u in prepared.plan.units if only is None or u.kind in only]
    own = [kind for kind in dict.fromkeys(u.kind for u in units) if kind in RUNNERS]
    for kind in own:
        todo = driver.pending([u for u in units if u.kind == kind])
        if todo:
            RUNNERS.get(kind)(driver, prepared, todo)
    driver.run([u for u in units if u.kind not in own])


def merge_units(prepared: Prepared, finished: dict[str, tuple[str, ...]]) -> list[Unit]:
    """The merge phase's units, planned from the first phase's finished units."""
    return plan_phase("merge", prepared.spec, prepared.facts, PlanInputs(finished=finished))


def run_merge(driver: Driver, prepared: Prepared, only: tuple[str, ...] | None) -> list[Unit]:
    """The merge phase (the examples, from the merged finished scans); returns its units."""
    finished = finished_keys(driver.store, prepared.plan.units)
    units = [u for u in merge_units(prepared, finished) if only is None or u.kind in only]
    todo = driver.pending(units)
    for kind in dict.fromkeys(u.kind for u in todo):
        if kind in INPUTS:
            ready = INPUTS.get(kind)(driver, prepared, [u for u in todo if u.kind == kind], finished)
            todo = [u for u in todo if u.kind != kind] + ready
    driver.execute(todo)
    return units


def run_stages(driver: Driver, prepared: Prepared) -> set[str]:
    """The stages after the merge phase (the activation atlases); returns the keys they own."""
    finished = finished_keys(driver.store, prepared.plan.units)
    return {key for _, stage in STAGES.items() for key in stage.run(driver, prepared, finished)}


def announced_units(prepared: Prepared, store: Store) -> list[Unit]:
    """The stages' units known before they run (activation-atlas icons of stored grids only)."""
    return [unit for _, stage in STAGES.items() for unit in stage.announced(prepared, store)]


def input_tables_keys(plan_units: Sequence[Unit], table: str) -> tuple[str, ...]:
    """The keys of the units whose kind writes `table` (the skipped inputs of the scans)."""
    return tuple(u.key for u in plan_units if table in UNIT_KINDS.get(u.kind).tables)


def run_job(
    spec: JobSpec,
    force: bool = False,
    build: bool = True,
    only: tuple[str, ...] | None = None,
    progress: Callable[[int], Callable[[Unit, str], None]] | None = None,
) -> JobResult:
    """Run a job end to end. `only` limits the unit kinds (e.g. scan + examples for `atlas scan`).

    `progress(total)` gives the callback that hears of each unit: "done", "failed", "skipped"
    (already stored) or "planned" (a unit found during the run, beyond `total`: atlas icons).
    """
    spec = checked(spec)  # before any work, even the model
    started = _now()
    t0 = time.perf_counter()
    prepared = prepare(spec)
    spec = prepared.spec  # dictionary layers renamed to their content-hashed names
    with writing(spec) as store:
        total = sum(only is None or u.kind in only for u in prepared.plan.units)
        every = prepared.plan.keys()  # as if every first-phase unit finishes
        total += sum(only is None or u.kind in only for u in merge_units(prepared, every))
        if only is None:  # icons of grids computed during the run are announced then ("planned")
            total += len(announced_units(prepared, store))
        tick = progress(total) if progress else None
        driver = Driver(spec, store, JobResult(out=spec.out), force, tick)
        try:
            if spec.cost.budget or spec.cost.budget_gpu_hours:  # stop before, or as soon as, it passes
                from atlas.run.cost import Spend, check_estimate, cluster_gpus

                units = [u for u in prepared.plan.units if only is None or u.kind in only]
                left = set(store.pending([u.key for u in units], force))
                check_estimate([u for u in units if u.key in left], spec)
                driver.tick = Spend(spec.cost, cluster_gpus).watch(tick)
            store.write_job(job_info(prepared, started))
            run_first(driver, prepared, only)
            merged = run_merge(driver, prepared, only)
            staged = run_stages(driver, prepared) if only is None else set()
            if only is None:  # units of older settings would show up beside the new ones
                keep = {u.key for u in prepared.plan.units} | {u.key for u in merged} | staged
                apply_retention(store, keep, spec.keep_runs)
            store.write_job(job_info(prepared, started, _now()))
        finally:
            driver.shutdown()
    result = driver.result
    result.skipped_inputs = count_reasons(
        read_skipped(store, input_tables_keys(prepared.plan.units, SKIPPED))
    )
    if build:
        from atlas.site.publish import site_of_store

        index, published = site_of_store(spec.out)
        result.site = published or index
    result.seconds = time.perf_counter() - t0
    return result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def job_status(spec: JobSpec) -> dict[str, list[str]]:
    """Which units of the job are done, pending, failed, and which stored units are stale; `later`:
    the units planned once those they read are done (examples after the scans), and `because`:
    why the pending and failed ones are to be computed, "N: reason" largest group first."""
    from atlas.run.reasons import reasons

    prepared = prepare(spec)
    spec = prepared.spec  # dictionary layers renamed to their content-hashed names
    store = open_store(spec.out)
    wanted = list(prepared.plan.units)
    finished = finished_keys(store, prepared.plan.units, complete=True)
    wanted += merge_units(prepared, finished)
    for _, stage in STAGES.items():  # listed once the units they read are all stored
        if all(kind in finished or not prepared.plan.by_kind(kind) for kind in stage.after):
            wanted += stage.announced(prepared, store)
    todo = set(store.pending([u.key for u in wanted], verify=True))
    status: dict[str, list[str]] = {"done": [], "pending": [], "failed": [], "stale": []}
    for unit in wanted:
        if unit.key not in todo:
            status["done"].append(unit.label)
        elif store.is_failed(unit.key):
            status["failed"].append(f"{unit.label}: {store.entry(unit.key).reason}")
        else:
            status["pending"].append(unit.label)
    keys = {u.key for u in wanted}
    status["stale"] = [f"{e.kind} {e.layer} ({e.key})" for e in store.entries() if e.key not in keys]
    status["later"] = [u.label for u in merge_units(prepared, prepared.plan.keys()) if u.key not in keys]
    computed = [u for u in wanted if u.key in todo]
    status["because"] = [f"{count}: {reason}" for reason, count in reasons(prepared, store, computed)]
    return status
