"""Building a timeline: every checkpoint of the series probed, the selected ones rendered.

The timeline has its own store, `<out>/timeline`, beside the job's: a job's run prunes the units
its plan does not list, and a timeline's history must survive that. Within the timeline store a
run keeps every unit the series refers to, so nothing of an earlier checkpoint is ever pruned.
Content keys hold each checkpoint's weight digest, so a rerun after one more checkpoint computes
that checkpoint's units (and its match with the previous one) and skips the rest without Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from atlas.models import load_model
from atlas.outdir import check_output, claim_output
from atlas.plan import ModelFacts, Unit, make_unit, render_units
from atlas.spec import JobSpec, check_against_model
from atlas.storage import is_uri
from atlas.store import Store, open_store
from atlas.timeline.compare import compare
from atlas.timeline.probe import probe_ids
from atlas.timeline.series import (
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
from atlas.work import ProbeWork

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


def gather_series(spec: JobSpec, store: Store, add: Sequence[Path] = ()) -> list[Checkpoint]:
    """The stored series plus the spec's and `add`'s checkpoints not yet in it, in series order."""
    series = stored_series(store)
    known = {c.digest for c in series}
    for path in expand([*spec.model.checkpoints, *map(str, add)]):
        digest = load_model(spec.model.name, path, spec.model.weights).digest
        if digest not in known:
            known.add(digest)
            series.append(Checkpoint(path=str(path.resolve()), digest=digest, step=step_of(path)))
    if not series:
        raise TimelineError(
            f"{spec.source}: the timeline has no checkpoints; list them in [model] checkpoints "
            '(paths or a glob such as "ckpt/step-*.pt") or add one with `atlas timeline JOB --add CKPT`'
        )
    return ordered(series)


@dataclass(frozen=True)
class TimelinePlan:
    series: tuple[Checkpoint, ...]  # with the keys each checkpoint's results go under
    units: dict[str, tuple[Unit, ...]]  # checkpoint digest -> its probe and render units


def plan_timeline(
    spec: JobSpec, series: Sequence[Checkpoint], channels: dict[str, int], ids: Sequence[str], data: str
) -> TimelinePlan:
    """Pure: the probe unit of every checkpoint, render units of the selected ones, match keys."""
    layers = tuple(layer.name for layer in spec.layers)
    probe = ProbeWork(layers=layers, positions=spec.timeline.positions, seed=spec.render.seed, data=data)
    planned, units = [], {}
    for position, checkpoint in enumerate(series):
        probe_unit = make_unit(checkpoint.digest, "*", (), probe, inputs=tuple(ids))
        renders = (
            render_units(spec, ModelFacts(checkpoint.digest, channels))
            if rendered(position, len(series), spec)
            else []
        )
        units[checkpoint.digest] = (probe_unit, *renders)
        before = planned[-1].probe_key if planned else ""
        planned.append(
            replace(
                checkpoint,
                probe_key=probe_unit.key,
                match_key=match_key(before, probe_unit.key, spec.timeline.role_threshold) if before else "",
                render_keys=tuple(u.key for u in renders) or checkpoint.render_keys,
            )
        )
    return TimelinePlan(series=tuple(planned), units=units)


def _probe_data(spec: JobSpec) -> tuple[tuple[str, ...], str]:
    """The probe set (ids spread over the examples source) and its fingerprint."""
    from atlas.data import open_source

    source = open_source(spec.examples.source, column=spec.examples.column)
    ids = probe_ids(source.ids(), spec.timeline.probes)
    digest = hashlib.sha256("\n".join([source.fingerprint(), *ids]).encode()).hexdigest()[:20]
    return ids, digest


def prepare_timeline(spec: JobSpec, store: Store, add: Sequence[Path] = ()) -> TimelinePlan:
    """The series with its units; layer names and channel counts are checked on the newest weights."""
    series = gather_series(spec, store, add)
    on_disk = [c.path for c in series if Path(c.path).is_file()]
    model = load_model(spec.model.name, on_disk[-1] if on_disk else spec.model.checkpoint, spec.model.weights)
    check_against_model(spec, model)
    channels = {layer.name: model.channels(layer.name) for layer in spec.layers}
    ids, data = _probe_data(spec)
    return plan_timeline(spec, series, channels, ids, data)


def run_timeline(spec: JobSpec, add: Sequence[Path] = (), force: bool = False) -> TimelineResult:
    """Probe every checkpoint, render the selected ones, match consecutive ones, keep the series."""

    local = not is_uri(spec.out)  # the output-folder rules (atlas.outdir) are for local folders
    if local:
        spec = spec.replace(out=check_output(spec.out, spec.name))
    t0 = time.perf_counter()
    if local:
        claim_output(spec.out, spec.name)
    store = timeline_store(spec.out)
    store.acquire()  # one driver per store
    try:
        return _run(spec, store, add, force, t0)
    finally:
        store.release()


def _run(spec: JobSpec, store: Store, add: Sequence[Path], force: bool, t0: float) -> TimelineResult:
    from atlas.execute import Executor

    before = {c.digest for c in stored_series(store)}
    plan = prepare_timeline(spec, store, add)
    result = TimelineResult(out=spec.out, checkpoints=len(plan.series))
    result.added = sum(c.digest not in before for c in plan.series)
    todo: list[Unit] = []
    for checkpoint in plan.series:
        units = plan.units[checkpoint.digest]
        pending = set(store.pending([u.key for u in units], force=force))
        result.skipped += len(units) - len(pending)
        if pending and not Path(checkpoint.path).is_file():  # finished units stay; new ones need weights
            result.unavailable.append(checkpoint.path)
            continue
        todo += [replace(u, checkpoint=checkpoint.path) for u in units if u.key in pending]
    if todo:  # one pool for every checkpoint: each worker swaps weights, it never restarts
        executor = Executor(checkpoint_spec(spec, todo[-1].checkpoint))
        try:
            report = executor.run(todo, store)
        finally:
            executor.shutdown()
        result.failed += report.failed
        for unit in todo:
            if is_done(store, unit.key):
                result.computed[unit.kind] = result.computed.get(unit.kind, 0) + 1
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
    store.prune(keep)
    store.flush()
    result.seconds = time.perf_counter() - t0
    return result
