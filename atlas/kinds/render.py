"""Render units: a chunk of a layer's channels, its random directions, or a pair of channels,
optimized on a worker (atlas.optvis) into the `render` table, with a quality record per picture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from atlas.core.schema import RENDER_SCHEMA
from atlas.kinds.context import WorkerContext, png_bytes
from atlas.optvis import render_channel_sets, render_directions, render_pair
from atlas.plan.kinds import register_kind
from atlas.plan.units import Unit
from atlas.plan.work import DirectionsWork, PairWork, RenderWork
from atlas.quality.record import quality_table


def rendered_table(images: Sequence[Any], unit_key: str) -> pa.Table:
    """RenderedImage records -> the `render` table."""
    columns = {
        "layer": [r.layer for r in images],
        "channel": [int(r.channel) for r in images],
        "channel_b": [int(r.channel_b) for r in images],
        "objective": [r.objective for r in images],
        "variant": [int(r.variant) for r in images],
        "label": [r.label for r in images],
        "image": [png_bytes(r.image) for r in images],
        "activation": [float(r.activation) for r in images],
        "loss": [[float(v) for v in r.loss] for r in images],
        "unit_key": [unit_key] * len(images),
    }
    return pa.table(columns, schema=RENDER_SCHEMA)


def _render(ctx: WorkerContext, unit: Unit, work: RenderWork) -> dict[str, pa.Table]:
    return _render_tables(ctx, unit, _render_many(ctx, [unit])[0])


def _render_many(ctx: WorkerContext, units: Sequence[Unit]) -> list[list[Any]]:
    """The rendered images of render units that share their settings, optimized together."""
    requests = [(unit.layer, unit.channels) for unit in units]
    return render_channel_sets(ctx.model, requests, units[0].work.render, ctx.images_per_pass)


def _render_tables(ctx: WorkerContext, unit: Unit, images: Sequence[Any]) -> dict[str, pa.Table]:
    return {"render": rendered_table(images, unit.key), "quality": quality_table(ctx.model, images, unit.key)}


def _directions(ctx: WorkerContext, unit: Unit, work: DirectionsWork) -> dict[str, pa.Table]:
    images = render_directions(ctx.model, unit.layer, work.directions, work.render, seed=work.render.seed)
    return {"render": rendered_table(images, unit.key)}


def _pair(ctx: WorkerContext, unit: Unit, work: PairWork) -> dict[str, pa.Table]:
    a, b = unit.channels
    images = render_pair(ctx.model, unit.layer, a, b, work.render, steps_between=work.interpolation_steps)
    return {"render": rendered_table(images, unit.key)}


def _render_packed(ctx: WorkerContext, units: Sequence[Unit]) -> list[dict[str, pa.Table]]:
    return [
        _render_tables(ctx, unit, rows) for unit, rows in zip(units, _render_many(ctx, units), strict=True)
    ]


register_kind("render", _render, run_many=_render_packed)
register_kind("directions", _directions)
register_kind("pair", _pair)
