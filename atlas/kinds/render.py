"""Render units: a chunk of a layer's channels, its random directions, or a pair of channels,
optimized on a worker (atlas.optvis) into the `render` table, with a quality record per picture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from atlas.core.schema import RENDER_SCHEMA, keyed_table
from atlas.kinds.context import WorkerContext, png_bytes
from atlas.optvis import iter_channel_sets, render_directions, render_pair
from atlas.plan.kinds import PlanInputs, Speed, Tables, register_kind
from atlas.plan.spec import Densest, JobSpec, LayerSpec, RenderSpec
from atlas.plan.units import ModelFacts, Unit, chunks, layer_channels, make_unit, render_for
from atlas.plan.work import Work, render_key_settings
from atlas.quality.record import quality_table


@dataclass(frozen=True)
class RenderWork(Work):
    """Optimize each channel of the unit with every objective of the render settings."""

    kind: ClassVar[str] = "render"
    version: ClassVar[str] = "4"  # bump when its result changes for the same inputs
    render: RenderSpec

    def key_settings(self) -> dict[str, Any]:
        return render_key_settings(self.render)


@dataclass(frozen=True)
class DirectionsWork(Work):
    """Optimize `directions` random directions in the layer's activation space."""

    kind: ClassVar[str] = "directions"
    version: ClassVar[str] = "4"  # bump when its result changes for the same inputs
    render: RenderSpec
    directions: int

    def key_settings(self) -> dict[str, Any]:
        return {**render_key_settings(self.render), "directions": self.directions}


@dataclass(frozen=True)
class PairWork(Work):
    """Optimize two channels jointly, and the interpolation between them."""

    kind: ClassVar[str] = "pair"
    version: ClassVar[str] = "4"  # bump when its result changes for the same inputs
    render: RenderSpec
    interpolation_steps: int

    def key_settings(self) -> dict[str, Any]:
        return {**render_key_settings(self.render), "interpolation_steps": self.interpolation_steps}


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
    }
    return keyed_table(columns, RENDER_SCHEMA, unit_key)


def _render(ctx: WorkerContext, unit: Unit, work: RenderWork) -> Tables:
    return _render_packed(ctx, [unit])[0]


def _render_packed(ctx: WorkerContext, units: Sequence[Unit]) -> list[Tables]:
    """Render units that share their settings, optimized together. Each unit's `render` table
    (its PNGs) goes to the writer thread as soon as the pass with its last chunk is done, while
    the next pass optimizes; its quality record (forward passes) is measured here, in between."""
    requests = [(unit.layer, unit.channels) for unit in units]
    rendered = iter_channel_sets(ctx.model, requests, units[0].work.render, ctx.images_per_pass)
    pending: dict[int, Tables] = {}
    for index, images in rendered:
        key = units[index].key
        pending[index] = {
            "render": ctx.later(rendered_table, images, key),
            "quality": quality_table(ctx.model, images, key),
        }
    return [pending[index] for index in range(len(units))]


def _directions(ctx: WorkerContext, unit: Unit, work: DirectionsWork) -> Tables:
    images = render_directions(ctx.model, unit.layer, work.directions, work.render, seed=work.render.seed)
    return {"render": ctx.later(rendered_table, images, unit.key)}


def _pair(ctx: WorkerContext, unit: Unit, work: PairWork) -> Tables:
    a, b = unit.channels
    images = render_pair(ctx.model, unit.layer, a, b, work.render, steps_between=work.interpolation_steps)
    return {"render": ctx.later(rendered_table, images, unit.key)}


def _layer_renders(spec: JobSpec, facts: ModelFacts, layer: LayerSpec, channels: Sequence[int]) -> list[Unit]:
    """The render units of `channels` of one [[layers]] entry, in chunks of channels_per_unit."""
    work = RenderWork(render_for(spec, facts, layer.name))
    return [
        make_unit(facts.digest, layer.name, chunk, work)
        for chunk in chunks(channels, spec.render.channels_per_unit)
    ]


def render_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    """Every layer's channels chosen for visualizations (`visualize`; all of them by default),
    except the layers that choose the densest: those are planned after the scan (`densest_units`)."""
    if not spec.render.enabled:
        return []
    units = []
    for layer in spec.layers:
        if not isinstance(layer.visualize, Densest):
            units += _layer_renders(spec, facts, layer, layer.visualize or layer_channels(layer, facts))
    return units


def densest(density: Mapping[int, float], count: int) -> tuple[int, ...]:
    """The `count` channels of highest `density` (ties: the lower channel), in channel order."""
    ranked = sorted(density, key=lambda channel: (-density[channel], channel))
    return tuple(sorted(ranked[:count]))


def densest_units(spec: JobSpec, facts: ModelFacts, density: Mapping[str, Mapping[int, float]]) -> list[Unit]:
    """The render units of the `visualize = "densest:N"` layers, from each channel's share of
    positions where it fires (`histogram.active`, by layer). A layer is planned only once the
    density of every one of its channels is known."""
    if not spec.render.enabled:
        return []
    units = []
    for layer in spec.layers:
        known = density.get(layer.name, {})
        if isinstance(layer.visualize, Densest) and set(layer_channels(layer, facts)) <= set(known):
            chosen = {channel: known[channel] for channel in layer_channels(layer, facts)}
            units += _layer_renders(spec, facts, layer, densest(chosen, layer.visualize.count))
    return units


def densest_stand_ins(spec: JobSpec, facts: ModelFacts) -> list[Unit]:
    """Units as many and as large as the densest layers' renders will be, for cost estimates
    before the scan says which channels they hold (every channel taken as equally dense)."""
    flat = {
        layer.name: dict.fromkeys(layer_channels(layer, facts), 0.0)
        for layer in spec.layers
        if isinstance(layer.visualize, Densest)
    }
    return densest_units(spec, facts, flat)


def directions_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    count = spec.interactions.random_directions
    if not count:
        return []
    return [
        make_unit(facts.digest, layer.name, (), DirectionsWork(render_for(spec, facts, layer.name), count))
        for layer in spec.layers
    ]


def pair_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    steps = spec.interactions.interpolation_steps
    return [
        make_unit(facts.digest, layer, (a, b), PairWork(render_for(spec, facts, layer), steps))
        for layer, a, b in spec.interactions.pairs
    ]


def images_per_channel(render: RenderSpec) -> int:
    """Pictures a render unit optimizes per channel: one per objective, `diversity` for diversity."""
    return sum(render.diversity if o == "diversity" else 1 for o in render.objectives)


def _step_seconds(spec: JobSpec, speed: Speed) -> float:
    return spec.render.steps / speed.render_image_steps_per_s


register_kind(
    RenderWork,
    phase="first",
    planner=render_units,
    handler=_render,
    run_many=_render_packed,
    cost=lambda unit, spec, speed: (
        len(unit.channels) * images_per_channel(spec.render) * _step_seconds(spec, speed)
    ),
    tables=("render", "quality"),
    reads=("render",),
)
register_kind(
    DirectionsWork,
    phase="first",
    planner=directions_units,
    handler=_directions,
    cost=lambda unit, spec, speed: unit.work.directions * _step_seconds(spec, speed),
    tables=("render",),
    reads=("render", "interactions"),
)
register_kind(
    PairWork,
    phase="first",
    planner=pair_units,
    handler=_pair,
    cost=lambda unit, spec, speed: (1 + unit.work.interpolation_steps) * _step_seconds(spec, speed),
    tables=("render",),
    reads=("render", "interactions"),
)
