"""Running one unit inside a worker: dispatch by kind to the renderer or the dataset scan.

Handlers return Arrow tables keyed by table kind (the columns are documented in the README);
they never write anything themselves, the driver does.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from atlas.data import ImageSource, open_source
from atlas.examples import direction_layer, finalize_layer, scan_shard
from atlas.models import LoadedModel, load_model, pick_device
from atlas.optvis import (
    RenderError,
    random_directions,
    render_channel_sets,
    render_directions,
    render_pair,
)
from atlas.plan import Unit
from atlas.provenance import provenance, with_provenance
from atlas.quality import quality_table
from atlas.registry import Registry
from atlas.schema import RENDER_SCHEMA
from atlas.skipped import KIND as SKIPPED
from atlas.skipped import skipped_table
from atlas.spec import ExamplesSpec, JobSpec
from atlas.timeline.probe import run_probe
from atlas.work import DirectionsWork, ExamplesWork, PairWork, RenderWork, ScanWork


class UnitFailed(RuntimeError):
    """A failure that retrying will not fix (NaN during optimization, bad data); recorded as failed."""


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 HxWx3 array -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


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


@dataclass
class WorkerContext:
    """What a worker keeps between units: the model (loaded once) and the job's image source."""

    model: LoadedModel
    examples: ExamplesSpec
    _source: ImageSource | None = field(default=None, repr=False)
    weights: str = "default"
    _checkpoint: tuple[str, LoadedModel] | None = field(default=None, repr=False)
    # Images per physical batch of render units (None: as the device's free memory allows).
    images_per_pass: int | None = None

    def source(self) -> ImageSource:
        """Opened on first use: workers that only render never list the dataset."""
        if self._source is None:
            self._source = open_source(self.examples.source, column=self.examples.column)
        return self._source

    def on_checkpoint(self, checkpoint: str) -> WorkerContext:
        """This context with another checkpoint's weights, kept until the next one (timeline units)."""
        if self._checkpoint is None or self._checkpoint[0] != checkpoint:
            model = load_model(self.model.name, checkpoint, self.weights, device=self.model.device)
            model.compile = self.model.compile
            self._checkpoint = (checkpoint, model)
        return replace(self, model=self._checkpoint[1])


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
    from atlas.actatlas.collect import collect_shard

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


def _icons(ctx: WorkerContext, unit: Unit, work: Any) -> dict[str, pa.Table]:
    from atlas.actatlas.stage import icons_tables  # the activation atlas's own module

    return icons_tables(ctx.model, unit, work)


Handler = Callable[[WorkerContext, Unit, Any], dict[str, pa.Table]]
# Unit kind -> handler; the planner makes units of these kinds, the executor runs them here.
UNIT_KINDS: Registry[Handler] = Registry("unit kind")
UNIT_KINDS.register("render", _render)
UNIT_KINDS.register("directions", _directions)
UNIT_KINDS.register("pair", _pair)
UNIT_KINDS.register("scan", _scan)
UNIT_KINDS.register("examples", _examples)
UNIT_KINDS.register("probe", run_probe)
UNIT_KINDS.register("icons", _icons)


def _stamped(ctx: WorkerContext, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    info = provenance(str(ctx.model.device))
    return {kind: with_provenance(table, info) for kind, table in tables.items()}


def run_unit(ctx: WorkerContext, unit: Unit) -> dict[str, pa.Table]:
    """Compute one unit; deterministic failures are raised as UnitFailed with the reason.

    Every table carries the worker's environment (``atlas.provenance``) in its metadata.
    """
    if unit.checkpoint is not None:
        ctx = ctx.on_checkpoint(unit.checkpoint)
    try:
        return _stamped(ctx, UNIT_KINDS.get(unit.kind)(ctx, unit, unit.work))
    except UnitFailed:
        raise
    except (FloatingPointError, ValueError, RenderError) as err:  # NaN/Inf, bad inputs: retry won't heal
        raise UnitFailed(f"{unit.label}: {err}") from err


def compile_backend(choice: str, device: torch.device) -> str:
    """The torch.compile backend for ``execute.compile`` on ``device`` ("" for none): "auto"
    compiles on CUDA only, where it pays (on CPU the one-time compilation outweighs the gain)."""
    if choice == "on" or (choice == "auto" and device.type == "cuda"):
        return "inductor"
    return ""


Outcome = dict[str, pa.Table] | UnitFailed


def run_units(ctx: WorkerContext, units: Sequence[Unit]) -> list[Outcome]:
    """Several units in one worker call, one outcome each (its tables, or why it failed).

    Render units with the same settings are optimized together (``render_channel_sets``: the
    chunks of a layer's units share physical batches), each getting exactly what it gets alone;
    if the packed run fails (one unit diverges), each of them runs alone so that only the bad
    one fails. Other units run one after another.
    """
    outcomes: dict[int, Outcome] = {}
    renders = [i for i, unit in enumerate(units) if unit.kind == "render" and unit.checkpoint is None]
    by_settings: dict[Any, list[int]] = {}
    for index in renders:
        by_settings.setdefault(units[index].work, []).append(index)
    for members in by_settings.values():
        if len(members) < 2:
            continue
        try:
            images = _render_many(ctx, [units[i] for i in members])
        except (FloatingPointError, ValueError, RenderError):
            continue  # each runs alone below: only the unit at fault fails
        for index, rows in zip(members, images, strict=True):
            outcomes[index] = _stamped(ctx, _render_tables(ctx, units[index], rows))
    for index, unit in enumerate(units):
        if index not in outcomes:
            try:
                outcomes[index] = run_unit(ctx, unit)
            except UnitFailed as err:
                outcomes[index] = err
    return [outcomes[index] for index in range(len(units))]


def make_context(spec: JobSpec, device: str = "auto") -> WorkerContext:
    model = load_model(spec.model.name, spec.model.checkpoint, spec.model.weights, device=pick_device(device))
    model.compile = compile_backend(spec.execute.compile, model.device)
    if any(layer.dictionary for layer in spec.layers):
        from atlas.actatlas.dictionary import attach_layers

        attach_layers(model, spec.layers)
    # The job's own checkpoint counts as loaded: a timeline's units on it do not load it twice.
    loaded = (str(spec.model.checkpoint), model) if spec.model.checkpoint else None
    return WorkerContext(model=model, examples=spec.examples, weights=spec.model.weights, _checkpoint=loaded)
