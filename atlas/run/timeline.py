"""Building a timeline: every checkpoint of the series probed, the selected ones rendered and scanned.

The timeline has its own store, `<out>/timeline`, beside the job's: a job's run prunes the units
its plan does not list, and a timeline's history must survive that. Within the timeline store a
run keeps every unit the series refers to, so nothing of an earlier checkpoint is ever pruned.
Content keys hold each checkpoint's weight digest, so a rerun after one more checkpoint computes
that checkpoint's units (and its match with the previous one) and skips the rest without Ray.
The checkpoints the spec selects get the job's own scan and examples units (the same keys an
`atlas run` on those weights plans), so the site shows each one's top dataset examples.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from atlas.kinds.examples.units import ScanWork, examples_units, scan_units
from atlas.kinds.render import render_units
from atlas.kinds.timeline.compare import compare
from atlas.kinds.timeline.probe import ProbeWork, probe_ids
from atlas.models import LoadedModel
from atlas.plan.kinds import PlanInputs
from atlas.plan.spec import JobSpec, check_against_model, follow_model
from atlas.plan.units import ModelFacts, Unit, make_unit
from atlas.run.driver import Driver, checked, writing
from atlas.run.job import open_dataset, token_layers
from atlas.run.phases import layer_scan, merged_scan
from atlas.site.series import (
    TIMELINE_DIR,
    Checkpoint,
    TimelineError,
    expand,
    is_done,
    ordered,
    series_key,
    series_table,
    step_of,
    stored_series,
    write_unit,
)
from atlas.store.store import Store, open_store

if TYPE_CHECKING:
    from atlas.data.source import ShardRef

MATCH_VERSION = "1"


@dataclass
class TimelineResult:
    out: Path
    checkpoints: int = 0
    added: int = 0
    computed: dict[str, int] = field(default_factory=dict)  # unit kind -> units computed this run
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # checkpoints whose file is gone
    seconds: float = 0.0


def timeline_store(out: Path | str) -> Store:
    """The timeline's own store, inside the job's output folder or bucket prefix."""
    return open_store(f"{str(out).rstrip('/')}/{TIMELINE_DIR}")


def rendered(position: int, count: int, spec: JobSpec) -> bool:
    """Whether the spec selects the checkpoint at `position` (of `count`) for renders."""
    every = spec.timeline.render_every
    latest = spec.timeline.render_latest and position == count - 1
    return latest or (every > 0 and position % every == 0)


def checkpoint_spec(spec: JobSpec, path: str) -> JobSpec:
    """The job as it runs on one checkpoint of the series: only the weights differ."""
    return spec.replace(model=replace(spec.model, checkpoint=Path(path)))


def match_key(before: str, after: str, role_threshold: float) -> str:
    payload = json.dumps([MATCH_VERSION, before, after, role_threshold])
    return f"match-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def gather_series(
    spec: JobSpec, store: Store, add: Sequence[Path] = ()
) -> tuple[list[Checkpoint], tuple[str, LoadedModel] | None]:
    """The stored series plus the spec's and `add`'s checkpoints not yet in it, in series order.

    A file whose path, size and mtime the series already holds keeps its digest: only new or
    rewritten files are loaded. Returns the last model loaded (with its path) for reuse.
    """
    series = stored_series(store)
    by_digest = {c.digest: i for i, c in enumerate(series)}
    cached = {(c.path, c.size, c.mtime_ns): c.digest for c in series if c.size >= 0}
    loaded: tuple[str, LoadedModel] | None = None
    for path in expand([*spec.model.checkpoints, *map(str, add)]):
        resolved, info = str(path.resolve()), path.stat()
        digest = cached.get((resolved, info.st_size, info.st_mtime_ns))
        if digest is None:
            model = spec.model.load(checkpoint=path)
            digest, loaded = model.digest, (resolved, model)
        stat = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        if digest not in by_digest:
            by_digest[digest] = len(series)
            series.append(Checkpoint(path=resolved, digest=digest, step=step_of(path), **stat))
        elif series[by_digest[digest]].path == resolved:  # same weights: remember the file as it is now
            series[by_digest[digest]] = replace(series[by_digest[digest]], **stat)
    if not series:
        raise TimelineError(
            f"{spec.source}: the timeline has no checkpoints; list them in [model] checkpoints "
            '(paths or a glob such as "ckpt/step-*.pt") or add one with `atlas timeline JOB --add CKPT`'
        )
    return ordered(series), loaded


@dataclass(frozen=True)
class TimelineData:
    """The images a timeline reads: the probe set and, for the selected checkpoints, the dataset."""

    probe_ids: tuple[str, ...]
    probe_data: str  # fingerprint of the probe images
    shards: tuple[ShardRef, ...] = ()  # the dataset's shards; none when the timeline scans nothing
    fingerprints: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimelinePlan:
    series: tuple[Checkpoint, ...]  # with the keys each checkpoint's results go under
    units: dict[str, tuple[Unit, ...]]  # checkpoint digest -> its probe, render and scan units
    examples: dict[str, tuple[Unit, ...]]  # checkpoint digest -> its examples units (after its scans)
    spec: JobSpec | None = None  # the spec planned, its model-dependent defaults resolved (follow_model)


def scanned(spec: JobSpec) -> bool:
    """Whether the checkpoints selected for renders also get their top dataset examples."""
    return spec.timeline.examples and spec.examples.enabled


def plan_timeline(
    spec: JobSpec,
    series: Sequence[Checkpoint],
    channels: dict[str, int],
    data: TimelineData,
    tokens: frozenset[str] = frozenset(),
) -> TimelinePlan:
    """Pure: the probe unit of every checkpoint, render, scan and examples units of the selected
    ones (the very units `atlas run` plans for those weights), match keys."""
    layers = tuple(layer.name for layer in spec.layers)
    probe = ProbeWork(
        layers=layers, positions=spec.timeline.positions, seed=spec.render.seed, data=data.probe_data
    )
    planned, units, examples = [], {}, {}
    for position, checkpoint in enumerate(series):
        facts = ModelFacts(checkpoint.digest, channels, tokens)
        probe_unit = make_unit(checkpoint.digest, "*", (), probe, inputs=data.probe_ids)
        selected = rendered(position, len(series), spec)
        renders = render_units(spec, facts, PlanInputs()) if selected else []
        shards = PlanInputs(data.shards, data.fingerprints)
        scans = scan_units(spec, facts, shards) if selected and scanned(spec) else []
        crops = examples_units(spec, facts, PlanInputs(finished={ScanWork.kind: tuple(u.key for u in scans)}))
        units[checkpoint.digest] = (probe_unit, *renders, *scans)
        examples[checkpoint.digest] = tuple(crops)
        before = planned[-1].probe_key if planned else ""
        planned.append(
            replace(
                checkpoint,
                probe_key=probe_unit.key,
                match_key=match_key(before, probe_unit.key, spec.timeline.role_threshold) if before else "",
                # a checkpoint no longer selected (no longer the latest) keeps what it has
                render_keys=tuple(u.key for u in renders) or checkpoint.render_keys,
                scan_keys=tuple(u.key for u in scans) or checkpoint.scan_keys,
                examples_keys=tuple(u.key for u in crops) or checkpoint.examples_keys,
            )
        )
    return TimelinePlan(series=tuple(planned), units=units, examples=examples)


def timeline_data(spec: JobSpec) -> TimelineData:
    """The probe set (ids spread over the examples source), its fingerprint, and the dataset's shards."""
    source, shards, fingerprints = open_dataset(spec)  # the probe set is drawn from it either way
    ids = probe_ids(source.ids(), spec.timeline.probes)
    digest = hashlib.sha256("\n".join([source.fingerprint(), *ids]).encode()).hexdigest()[:20]
    if not scanned(spec):
        return TimelineData(ids, digest)
    return TimelineData(ids, digest, tuple(shards), tuple(fingerprints))


def prepare_timeline(spec: JobSpec, store: Store, add: Sequence[Path] = ()) -> TimelinePlan:
    """The series with its units; layer names and channel counts are checked on the newest weights
    (the model gather_series loaded last when it is those, so adding a checkpoint loads it once)."""
    series, loaded = gather_series(spec, store, add)
    on_disk = [c.path for c in series if Path(c.path).is_file()]
    newest = on_disk[-1] if on_disk else spec.model.checkpoint
    model = loaded[1] if loaded is not None and loaded[0] == newest else spec.model.load(checkpoint=newest)
    spec = follow_model(spec, model)
    check_against_model(spec, model)
    channels = {layer.name: model.channels(layer.name) for layer in spec.layers}
    tokens = token_layers(model, list(channels))
    return replace(plan_timeline(spec, series, channels, timeline_data(spec), tokens), spec=spec)


def run_timeline(spec: JobSpec, add: Sequence[Path] = (), force: bool = False) -> TimelineResult:
    """Probe every checkpoint, render the selected ones, match consecutive ones, keep the series."""
    if any(layer.derived for layer in spec.layers):  # refused before the output folder is claimed
        raise TimelineError(
            f"{spec.source}: a timeline follows a layer's channels across checkpoints, not a dictionary's "
            "directions or an SAE's features; remove `dictionary` or `sae` from [[layers]] (`atlas run` "
            "renders them)"
        )
    spec = checked(spec)
    t0 = time.perf_counter()
    with writing(spec, store_at=timeline_store) as store:
        return _run(spec, store, add, force, t0)


def _run(spec: JobSpec, store: Store, add: Sequence[Path], force: bool, t0: float) -> TimelineResult:
    before = {c.digest for c in stored_series(store)}
    plan = prepare_timeline(spec, store, add)
    spec = plan.spec or spec  # a fixed-size model's render size, where the spec did not write it
    result = TimelineResult(out=spec.out, checkpoints=len(plan.series))
    result.added = sum(c.digest not in before for c in plan.series)
    driver = Driver(spec, store, force=force)
    try:
        # Phase one: probes, renders and scans of every checkpoint on one pool (each worker swaps
        # weights, it never restarts); phase two: each scanned checkpoint's examples from its scans.
        _run_checkpoints(driver, result, {c.path: plan.units[c.digest] for c in plan.series})
        scanned_ones = {
            c.path: plan.examples[c.digest] for c in plan.series if not store.pending(c.scan_keys)
        }
        _run_checkpoints(driver, result, scanned_ones, merge=True)
    finally:
        driver.shutdown()
    result.skipped, result.failed = driver.result.skipped, driver.result.failed
    for previous, checkpoint in itertools.pairwise(plan.series):
        if store.pending([checkpoint.match_key], force=force) and all(
            is_done(store, k) for k in (previous.probe_key, checkpoint.probe_key)
        ):
            tables = compare(
                store.read_unit(previous.probe_key, "probe"),
                store.read_unit(checkpoint.probe_key, "probe"),
                spec.timeline.role_threshold,
                checkpoint.match_key,
            )
            write_unit(store, checkpoint.match_key, "match", tables)
            result.computed["match"] = result.computed.get("match", 0) + 1
    table = series_table(plan.series)
    key = series_key(table)
    if not is_done(store, key):
        write_unit(store, key, "series", {"series": table})
    keep = {key}
    for checkpoint in plan.series:
        keep |= {checkpoint.probe_key, checkpoint.match_key, *checkpoint.render_keys}
        keep |= {*checkpoint.scan_keys, *checkpoint.examples_keys}
    store.prune(keep)
    store.flush()
    result.seconds = time.perf_counter() - t0
    return result


def _run_checkpoints(
    driver: Driver, result: TimelineResult, by_checkpoint: dict[str, Sequence[Unit]], merge: bool = False
) -> None:
    """Each checkpoint's pending units, on the weights of its file, on one executor (started at
    the first need). With `merge`, the units are examples units and read their merged scans."""
    todo: list[Unit] = []
    for path, units in by_checkpoint.items():
        pending = driver.pending(units)
        if pending and not Path(path).is_file():  # finished units stay; new ones need weights
            result.unavailable.append(path)
            continue
        pending = [replace(u, checkpoint=path) for u in pending]
        if merge and pending:
            merged = merged_scan(driver.spec, driver.store, pending[0].work.scans)
            pending = [replace(u, inputs=layer_scan(merged, u)) for u in pending]
        todo += pending
    if todo:
        driver.execute(todo, checkpoint_spec(driver.spec, todo[-1].checkpoint))
    for unit in todo:
        if is_done(driver.store, unit.key):
            result.computed[unit.kind] = result.computed.get(unit.kind, 0) + 1
