"""Scan and examples units: a dataset shard's partial scan of every layer, and the cropped
examples and histograms of a chunk of a layer's channels from the merged scans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from atlas.data.skipped import KIND as SKIPPED
from atlas.data.skipped import skipped_table
from atlas.kinds.context import WorkerContext
from atlas.kinds.examples import direction_layer, finalize_layer, scan_shard
from atlas.optvis import random_directions
from atlas.plan.kinds import PlanInputs, register_kind
from atlas.plan.spec import JobSpec
from atlas.plan.units import ModelFacts, Unit, chunks, layer_channels, make_unit
from atlas.plan.work import Work
from atlas.store.store import Store

# Channels per examples unit: bounds the size of one result (crops and thumbnails are PNG bytes).
EXAMPLES_CHANNELS_PER_UNIT = 64


@dataclass(frozen=True)
class ScanWork(Work):
    """Scan one dataset shard: per-channel top/bottom k and histograms of every layer at once.

    `data` fingerprints the shard (and the whole data set, since top-k are global).
    """

    kind: ClassVar[str] = "scan"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    layers: tuple[str, ...]
    k: int
    batch_size: int
    directions: int  # random directions per layer, scanned like channels
    seed: int  # draws the random directions, as the renderer does
    data: str
    vectors: tuple[str, ...] = ()  # layers whose activation vectors are sampled for an activation atlas
    vector_samples: int = 0  # the bound on that sample (atlas.kinds.actatlas.collect)

    def key_settings(self) -> dict[str, Any]:
        """Without an activation atlas the key stays what it was before atlases existed."""
        settings = super().key_settings()
        if not self.vectors:
            del settings["vectors"], settings["vector_samples"]
        return settings


@dataclass(frozen=True)
class ExamplesWork(Work):
    """Crop the chosen examples of a chunk of a layer's channels from the merged scans."""

    kind: ClassVar[str] = "examples"
    version: ClassVar[str] = "2"  # bump when its result changes for the same inputs (2: histogram.active)
    scans: tuple[str, ...]  # the scan units merged, sorted
    crop_size: int
    thumb_size: int
    bins: int
    quantiles: tuple[float, float]
    directions: int
    with_directions: bool  # also crop the layer's random directions (the layer's first chunk)
    # A feature dashboard (SAE layers): quantile groups and the share of images where it fires
    dashboard: bool = False

    def key_settings(self) -> dict[str, Any]:
        """Without a dashboard the key stays what it was before dashboards existed."""
        settings = super().key_settings()
        if not self.dashboard:
            del settings["dashboard"]
        return settings


def _scan(ctx: WorkerContext, unit: Unit, work: ScanWork) -> dict[str, pa.Table]:
    directions = None
    if work.directions:
        directions = {
            layer: random_directions(ctx.model, layer, work.directions, seed=work.seed)
            for layer in work.layers
        }
    scan = dict(k=work.k, batch_size=work.batch_size, directions=directions)
    if not work.vectors:
        partial = scan_shard(ctx.model, work.layers, ctx.source(), unit.inputs, **scan)
        return {"scan": partial.to_table(), SKIPPED: skipped_table(partial.skipped, unit.key)}
    from atlas.kinds.actatlas.collect import collect_shard

    partial, sample = collect_shard(
        ctx.model, work.layers, ctx.source(), unit.inputs, work.vector_samples, vectors=work.vectors, **scan
    )
    tables = {"scan": partial.to_table(), "vectors": sample.to_table(unit.key)}
    return {**tables, SKIPPED: skipped_table(partial.skipped, unit.key)}


def _examples(ctx: WorkerContext, unit: Unit, work: ExamplesWork) -> dict[str, pa.Table]:
    """Crop the chosen examples of a layer and of its random directions (as channels -1, -2, ...)."""
    merged = unit.inputs
    names = [unit.layer] + ([direction_layer(unit.layer)] if work.with_directions else [])
    examples, histograms = [], []
    for name in names:
        tables = finalize_layer(
            ctx.model,
            name,
            merged,
            ctx.source(),
            crop_size=work.crop_size,
            thumb_size=work.thumb_size,
            unit_key=unit.key,
            bins=work.bins,
            quantiles=work.quantiles,
            channels=unit.channels if name == unit.layer else None,
            dashboard=work.dashboard and name == unit.layer,
        )
        if name != unit.layer:
            tables = tuple(_as_directions(t, unit.layer) for t in tables)
        examples.append(tables[0])
        histograms.append(tables[1])
    return {"examples": pa.concat_tables(examples), "histogram": pa.concat_tables(histograms)}


def _as_directions(table: pa.Table, layer: str) -> pa.Table:
    """Rows of the `<layer>@direction` pseudo-layer become rows of `layer` with channel -1 - i."""
    index = table.schema.get_field_index
    channels = pc.subtract(pa.scalar(-1, pa.int32()), table.column("channel"))
    table = table.set_column(index("channel"), "channel", channels.cast(pa.int32()))
    return table.set_column(index("layer"), "layer", pa.array([layer] * table.num_rows, pa.string()))


def scan_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    """One unit per dataset shard; each reads every requested layer in a single forward pass."""
    if not spec.examples.enabled:
        return []
    ex = spec.examples
    units = []
    for shard, fingerprint in zip(inputs.shards, inputs.fingerprints, strict=True):
        work = ScanWork(
            layers=tuple(layer.name for layer in spec.layers),
            k=ex.k,
            batch_size=ex.batch_size,
            directions=spec.interactions.random_directions,
            seed=spec.render.seed,
            data=fingerprint,
            vectors=spec.activation_atlas.layers,
            vector_samples=spec.activation_atlas.samples if spec.activation_atlas.layers else 0,
        )
        units.append(make_unit(facts.digest, "*", (), work, inputs=shard))
    return units


def examples_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    """Per chunk of a layer's channels: crop the chosen examples from the finished scans, merged.

    The driver attaches the merged partial scan of the unit's layer as `inputs`. The first chunk
    of a layer also crops the examples of the layer's random directions.
    """
    scans = inputs.finished.get(ScanWork.kind, ())
    if not spec.examples.enabled or not scans:
        return []
    ex = spec.examples
    directions = spec.interactions.random_directions
    units = []
    for layer in spec.layers:
        for index, chunk in enumerate(chunks(layer_channels(layer, facts), EXAMPLES_CHANNELS_PER_UNIT)):
            work = ExamplesWork(
                scans=tuple(sorted(scans)),
                crop_size=ex.crop_size,
                thumb_size=ex.thumb_size,
                bins=ex.bins,
                quantiles=tuple(ex.quantiles),
                directions=directions,
                with_directions=index == 0 and bool(directions),
                dashboard=layer.sae is not None,
            )
            units.append(make_unit(facts.digest, layer.name, chunk, work))
    return units


def stored_density(store: Store, units: Sequence[Unit]) -> dict[str, dict[int, float]]:
    """Each channel's share of positions where it fires (`histogram.active`), by layer, from the
    examples `units` that are stored (their random directions left out)."""
    missing = set(store.pending([unit.key for unit in units]))
    density: dict[str, dict[int, float]] = {}
    for unit in units:
        if unit.kind != ExamplesWork.kind or unit.key in missing:
            continue
        table = store.read_unit(unit.key, "histogram", ["channel", "active"]).to_pydict()
        found = density.setdefault(unit.layer, {})
        for channel, active in zip(table["channel"], table["active"], strict=True):
            if channel >= 0 and active is not None:
                found[channel] = active
    return density


def _scan_seconds(unit: Unit, spec: JobSpec, speed: Any) -> float:
    return len(unit.inputs.source_ids) / speed.scan_images_per_s


register_kind(
    ScanWork,
    phase="first",
    planner=scan_units,
    handler=_scan,
    cost=_scan_seconds,
    tables=("scan", "vectors", SKIPPED),
    reads=("examples", "interactions", "activation_atlas"),
)
register_kind(
    ExamplesWork,
    phase="merge",
    planner=examples_units,
    handler=_examples,
    cost=lambda unit, spec, speed: 0.0,  # crops on the worker's CPU from the merged scans
    tables=("examples", "histogram"),
    reads=("examples", "interactions"),
)
