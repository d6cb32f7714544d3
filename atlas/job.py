"""Running a whole job: spec -> plan -> execute (two phases) -> store -> site.

Phase one runs every independent unit: renders, interactions and dataset-shard scans. Phase two
merges the scan partials and crops each layer's examples. Everything is checked before any work
starts, and every finished unit is in the store before the next one is collected.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path
from typing import Any

from atlas.examples import PartialScan, direction_layer
from atlas.models import LoadedModel, load_model, pick_device
from atlas.outdir import check_output, claim_output
from atlas.plan import CODE_VERSIONS, ModelFacts, Plan, Unit, examples_units, make_plan
from atlas.provenance import provenance
from atlas.site.columns import atlas_columns, columns_json
from atlas.skipped import count_reasons, read_skipped
from atlas.spec import JobSpec, check_against_model, spec_to_dict
from atlas.store import Store


@dataclass
class Prepared:
    """A checked job with its plan, ready to run or to report on."""

    spec: JobSpec
    model: LoadedModel
    facts: ModelFacts
    plan: Plan
    source: Any = None


@dataclass
class JobResult:
    out: Path
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    retried: int = 0
    seconds: float = 0.0
    site: Path | None = None
    skipped_inputs: dict[str, int] = field(default_factory=dict)  # reason -> images the scan skipped

    @property
    def ok(self) -> bool:
        return not self.failed


def prepare(spec: JobSpec) -> Prepared:
    """Load the model on the driver, check the spec against it, open the data, plan the units."""
    model = load_model(spec.model.name, spec.model.checkpoint, spec.model.weights)
    if any(layer.dictionary for layer in spec.layers):
        from atlas.actatlas.dictionary import attach_layers

        spec = spec.replace(layers=attach_layers(model, spec.layers))
    check_against_model(spec, model)
    facts = ModelFacts(model.digest, {layer.name: model.channels(layer.name) for layer in spec.layers})
    source, shards, fingerprints = None, [], []
    if spec.examples.enabled:
        from atlas.data import open_source

        source = open_source(spec.examples.source, column=spec.examples.column)
        shards = source.shards(spec.examples.shard_size)
        whole = source.fingerprint()  # any change to the data rescans: top-k are global
        fingerprints = [f"{whole}:{shard.index}:{len(shard.source_ids)}" for shard in shards]
    plan = make_plan(spec, facts, shards, fingerprints)
    return Prepared(spec, model, facts, plan, source)


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


def merged_scan(store: Store, scan_keys: tuple[str, ...]) -> PartialScan:
    """Merge every dataset shard's partial result, read back from the store."""
    partials = [PartialScan.from_table(store.read_unit(key, "scan")) for key in scan_keys]
    return reduce(PartialScan.merge, partials)


def _layer_scan(merged: PartialScan, unit: Unit) -> PartialScan:
    """The part of the merged scan an examples unit reads: its layer (and that layer's directions)."""
    names = [unit.layer] + ([direction_layer(unit.layer)] if unit.work.with_directions else [])
    return merged.select(names)


def run_job(
    spec: JobSpec,
    force: bool = False,
    build: bool = True,
    only: tuple[str, ...] | None = None,
    progress: Callable[[int], Callable[[Unit, str], None]] | None = None,
) -> JobResult:
    """Run a job end to end. `only` limits the unit kinds (e.g. scan + examples for `atlas scan`)."""
    from atlas.execute import Executor, RunReport

    spec = spec.replace(out=check_output(spec.out, spec.name))  # before any work, even the model
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    prepared = prepare(spec)
    spec = prepared.spec  # dictionary layers renamed to their content-hashed names
    claim_output(spec.out, spec.name)  # a spec that fails its checks leaves no folder behind
    store = Store(spec.out)
    store.sweep_temporary()
    store.write_job(job_info(prepared, started))
    units = [u for u in prepared.plan.units if only is None or u.kind in only]
    phase_two_possible = spec.examples.enabled and (only is None or "examples" in only)
    later = examples_units(spec, prepared.facts, prepared.plan.scan_keys) if phase_two_possible else []
    total = len(units) + len(later)
    tick = progress(total) if progress else None
    result = JobResult(out=spec.out)
    executor: Executor | None = None
    report = RunReport()

    def run_units(batch: list[Unit]) -> None:
        """Start Ray only when something is left to compute: a finished job reruns in a second."""
        nonlocal executor
        if not force and all(store.has(u.key) for u in batch):
            report.skipped += len(batch)
            for unit in batch:
                if tick:
                    tick(unit, "skipped")
            return
        if executor is None:
            executor = Executor(spec)
        report.add(executor.run(batch, store, force=force, on_progress=tick))

    try:
        run_units(units)
        finished: tuple[str, ...] = ()
        if phase_two_possible and prepared.plan.scan_keys:
            finished = tuple(k for k in prepared.plan.scan_keys if store.has(k, verify=False))
            if finished:
                pending = examples_units(spec, prepared.facts, finished)
                if force or not all(store.has(u.key) for u in pending):
                    merged = merged_scan(store, finished)
                    pending = [replace(u, inputs=_layer_scan(merged, u)) for u in pending]
                run_units(pending)
        atlas_keys: set[str] = set()
        if only is None and spec.activation_atlas.layers and finished:
            from atlas.actatlas.stage import run_atlas

            atlas_keys = run_atlas(spec, prepared.facts.digest, store, finished, run_units, force)
        if only is None:  # units of older settings would show up beside the new ones
            keep = {u.key for u in prepared.plan.units}
            keep |= {u.key for u in examples_units(spec, prepared.facts, finished)} | atlas_keys
            store.prune(keep)
    finally:
        if executor is not None:
            executor.shutdown()
    result.done, result.skipped, result.failed, result.retried = (
        report.done,
        report.skipped,
        report.failed,
        report.retried,
    )
    result.skipped_inputs = count_reasons(read_skipped(store, prepared.plan.scan_keys))
    finished_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    store.write_job(job_info(prepared, started, finished_at))
    if build:
        from atlas.site import build_site

        result.site = build_site(spec.out)
    result.seconds = time.perf_counter() - t0
    return result


def job_status(spec: JobSpec) -> dict[str, list[str]]:
    """Which units of the job are done, pending, failed, and which stored units are stale."""
    prepared = prepare(spec)
    store = Store(spec.out)
    wanted = list(prepared.plan.units)
    finished_scans = tuple(k for k in prepared.plan.scan_keys if store.has(k, verify=False))
    if len(finished_scans) == len(prepared.plan.scan_keys):
        wanted += examples_units(spec, prepared.facts, finished_scans)
    status: dict[str, list[str]] = {"done": [], "pending": [], "failed": [], "stale": []}
    for unit in wanted:
        if store.has(unit.key):
            status["done"].append(unit.label)
        elif store.is_failed(unit.key):
            status["failed"].append(f"{unit.label}: {store.entry(unit.key).reason}")
        else:
            status["pending"].append(unit.label)
    keys = {u.key for u in wanted}
    status["stale"] = [f"{e.kind} {e.layer} ({e.key})" for e in store.entries() if e.key not in keys]
    return status
