"""Scan and examples units: a dataset shard's partial scan of every layer, and the cropped
examples and histograms of a chunk of a layer's channels from the merged scans."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from atlas.data.skipped import KIND as SKIPPED
from atlas.data.skipped import skipped_table
from atlas.kinds.context import WorkerContext
from atlas.kinds.examples import direction_layer, finalize_layer, scan_shard
from atlas.optvis import random_directions
from atlas.plan.kinds import register_kind
from atlas.plan.units import Unit
from atlas.plan.work import ExamplesWork, ScanWork


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


register_kind("scan", _scan)
register_kind("examples", _examples)
