"""Running a whole job: spec -> plan -> store (what is pending) -> execute -> store -> site.

Phase one runs every independent unit: renders, interactions and dataset-shard scans. Phase two
merges the scan partials and crops each layer's examples. Each phase asks the store once what is
left to do (checksums included) and hands exactly that to the executor. Everything is checked
before any work starts, and every finished unit is in the store before the next one is collected.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from atlas.core.provenance import provenance
from atlas.data.skipped import count_reasons, read_skipped
from atlas.kinds.examples import PartialScan, direction_layer
from atlas.models import LoadedModel, load_model, pick_device
from atlas.plan.spec import JobSpec, LayerSpec, check_against_model, spec_to_dict
from atlas.plan.units import CODE_VERSIONS, ModelFacts, Plan, Unit, examples_units, make_plan
from atlas.run.report import JobResult
from atlas.site.columns import atlas_columns, columns_json
from atlas.store.location import is_uri
from atlas.store.outdir import check_output, claim_output
from atlas.store.retention import apply_retention
from atlas.store.store import Store, open_store

if TYPE_CHECKING:
    from atlas.data.source import ImageSource, ShardRef
    from atlas.run.executor import Executor


@dataclass
class Prepared:
    """A checked job with its plan, ready to run or to report on."""

    spec: JobSpec
    model: LoadedModel
    facts: ModelFacts
    plan: Plan
    source: ImageSource | None = None  # the dataset, opened once: the Ray Data scan reads it


def prepare(spec: JobSpec) -> Prepared:
    """Load the model on the driver, check the spec against it, open the data, plan the units."""
    model = load_model(spec.model.name, spec.model.checkpoint, spec.model.weights)
    if any(layer.dictionary for layer in spec.layers):
        from atlas.plan.dictionary import attach_layers

        spec = spec.replace(layers=attach_layers(model, spec.layers))
    check_against_model(spec, model)
    facts = ModelFacts(model.digest, {layer.name: model.channels(layer.name) for layer in spec.layers})
    source, shards, fingerprints = open_dataset(spec) if spec.examples.enabled else (None, [], [])
    plan = make_plan(spec, facts, shards, fingerprints)
    return Prepared(spec, model, facts, plan, source)


def open_dataset(spec: JobSpec) -> tuple[ImageSource, list[ShardRef], list[str]]:
    """The examples source, its shards and each shard's fingerprint for the scan units' keys."""
    from atlas.data.open import open_source

    source = open_source(spec.examples.source, column=spec.examples.column)
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
            }
        )
    return {
        "name": spec.name,
        "model": spec.model.name,
        "model_digest": prepared.facts.digest,
        "input_size": model.input_size,
        "layers": layers,
        "spec": spec_to_dict(spec),
        "started": started,
        "finished": finished,
        "renderer_version": CODE_VERSIONS["render"],
        "columns": columns_json(atlas_columns()),  # the site's row, from the objective registry
        "provenance": provenance(str(pick_device())),  # this node; each shard names its worker's
    }


def _direction_names(model: LoadedModel, layer: LayerSpec) -> list[str]:
    """A dictionary layer's K direction names, which the site shows beside the channel numbers."""
    from atlas.plan.dictionary import layer_dictionary

    return list(layer_dictionary(model, layer).names)


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


@dataclass
class UnitRunner:
    """Asks the store what is pending and runs exactly that; starts Ray only when something is.

    Checksums are checked once per run, here: a finished job reruns in a second, a damaged shard
    is recomputed.
    """

    spec: JobSpec
    store: Store
    result: JobResult
    force: bool = False
    tick: Callable[[Unit, str], None] | None = None
    executor: Executor | None = None

    def pending(self, units: Sequence[Unit]) -> list[Unit]:
        """The units still to compute; the others are counted (and reported) as skipped."""
        # A local store's checksums are read once per run; a bucket's are trusted by size (no
        # download of every shard: `atlas verify OUT` reads them).
        verify = self.store.location.local
        todo = set(self.store.pending([u.key for u in units], force=self.force, verify=verify))
        for unit in units:
            if unit.key not in todo:
                self.result.skipped += 1
                if self.tick:
                    self.tick(unit, "skipped")
        return [u for u in units if u.key in todo]

    def execute(self, units: Sequence[Unit]) -> None:
        if not units:
            return
        if self.executor is None:
            from atlas.run.executor import Executor

            self.executor = Executor(self.spec)
        self.executor.run(units, self.store, on_progress=self.tick, result=self.result)
        self.store.flush()

    def run(self, units: Sequence[Unit]) -> None:
        self.execute(self.pending(units))


def run_independent(runner: UnitRunner, prepared: Prepared, only: tuple[str, ...] | None) -> None:
    """Phase one: the dataset-shard scans on Ray Data, then renders and interactions.

    Scans run first, alone on the cluster (phases: scans and renders never wait on each other's GPUs).
    """
    units = [u for u in prepared.plan.units if only is None or u.kind in only]
    scans = runner.pending([u for u in units if u.kind == "scan"])
    if scans:
        from atlas.run.scans import run_scans

        run_scans(
            runner.spec,
            prepared.source,
            scans,
            runner.store,
            prepared.model.input_size,
            runner.result,
            runner.tick,
        )
    runner.run([u for u in units if u.kind != "scan"])


def run_examples(runner: UnitRunner, prepared: Prepared) -> list[Unit]:
    """Phase two: merge the finished scans and crop each layer's examples; returns its units."""
    scan_keys = prepared.plan.scan_keys
    unfinished = set(runner.store.pending(scan_keys))  # checked (or written) by phase one
    finished = tuple(key for key in scan_keys if key not in unfinished)
    units = examples_units(prepared.spec, prepared.facts, finished)
    todo = runner.pending(units)
    if todo:
        merged = merged_scan(runner.spec, runner.store, finished)
        todo = [replace(u, inputs=layer_scan(merged, u)) for u in todo]
    runner.execute(todo)
    return units


def run_atlases(runner: UnitRunner, prepared: Prepared) -> set[str]:
    """Phase three: the activation atlases of the finished scans; returns the keys it owns."""
    spec = prepared.spec
    unfinished = set(runner.store.pending(prepared.plan.scan_keys))
    finished = [u for u in prepared.plan.units if u.kind == "scan" and u.key not in unfinished]
    if not spec.activation_atlas.layers or not finished:
        return set()
    from atlas.kinds.actatlas.stage import run_atlas

    def tick(unit: Unit, outcome: str) -> None:  # the driver's own units count like executed ones
        if outcome in ("done", "skipped"):
            setattr(runner.result, outcome, getattr(runner.result, outcome) + 1)
        if runner.tick:
            runner.tick(unit, outcome)

    context = (prepared.model, prepared.source)
    store, force = runner.store, runner.force
    return run_atlas(spec, prepared.facts.digest, store, finished, runner.run, context, force, tick)


def atlas_units(prepared: Prepared, store: Store) -> list[Unit]:
    """The activation-atlas units known before the stage runs (icons of stored grids only)."""
    if not prepared.spec.activation_atlas.layers:
        return []
    from atlas.kinds.actatlas.stage import planned_units

    scans = [u for u in prepared.plan.units if u.kind == "scan"]
    return planned_units(prepared.spec, prepared.facts.digest, store, scans)


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
    local = not is_uri(spec.out)  # the output-folder rules (atlas.store.outdir) are for local folders
    if local:
        spec = spec.replace(out=check_output(spec.out, spec.name))  # before any work, even the model
    started = _now()
    t0 = time.perf_counter()
    prepared = prepare(spec)
    spec = prepared.spec  # dictionary layers renamed to their content-hashed names
    if local:
        claim_output(spec.out, spec.name)  # a spec that fails its checks leaves no folder behind
    store = open_store(spec.out)
    store.acquire()  # one driver per store; leftovers of a killed driver are cleaned up here
    with_examples = spec.examples.enabled and (only is None or "examples" in only)
    total = sum(only is None or u.kind in only for u in prepared.plan.units)
    if with_examples:
        total += len(examples_units(spec, prepared.facts, prepared.plan.scan_keys))
    if only is None:  # icons of grids computed during the run are announced then ("planned")
        total += len(atlas_units(prepared, store))
    tick = progress(total) if progress else None
    runner = UnitRunner(spec, store, JobResult(out=spec.out), force, tick)
    try:
        if spec.cost.budget or spec.cost.budget_gpu_hours:  # stop before, or as soon as, it passes
            from atlas.run.cost import Spend, check_estimate, cluster_gpus

            units = [u for u in prepared.plan.units if only is None or u.kind in only]
            left = set(store.pending([u.key for u in units], force))
            check_estimate([u for u in units if u.key in left], spec)
            runner.tick = Spend(spec.cost, cluster_gpus).watch(tick)
        store.write_job(job_info(prepared, started))
        run_independent(runner, prepared, only)
        examples = run_examples(runner, prepared) if with_examples else []
        atlases = run_atlases(runner, prepared) if only is None else set()
        if only is None:  # units of older settings would show up beside the new ones
            keep = {u.key for u in prepared.plan.units} | {u.key for u in examples} | atlases
            apply_retention(store, keep, spec.keep_runs)
        store.write_job(job_info(prepared, started, _now()))
    finally:
        if runner.executor is not None:
            runner.executor.shutdown()
        store.release()
        if "atlas.run.autoscale" in sys.modules:  # else Ray never asked the autoscaler for anything
            sys.modules["atlas.run.autoscale"].GPUS.release()  # idle GPU nodes added for the job may go
    result = runner.result
    result.skipped_inputs = count_reasons(read_skipped(store, prepared.plan.scan_keys))
    if build:
        from atlas.site.publish import site_of_store

        index, published = site_of_store(spec.out)
        result.site = published or index
    result.seconds = time.perf_counter() - t0
    return result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def job_status(spec: JobSpec) -> dict[str, list[str]]:
    """Which units of the job are done, pending, failed, and which stored units are stale."""
    prepared = prepare(spec)
    spec = prepared.spec  # dictionary layers renamed to their content-hashed names
    store = open_store(spec.out)
    wanted = list(prepared.plan.units)
    if not store.pending(prepared.plan.scan_keys):
        wanted += examples_units(spec, prepared.facts, prepared.plan.scan_keys)
        wanted += atlas_units(prepared, store)
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
    return status
