"""The activation-atlas stage of a job: after the scans, per atlas layer, layout -> grids -> icons.

Each step is a unit with a content key built on the key of the step it reads, so a changed
setting recomputes exactly what depends on it: a new grid size adds one grid and its icons and
keeps the layout; new render settings redo the icons only; new data redoes everything.

The layout and the grids are computed by the driver (UMAP fits on one machine; its `transform`
places the rest in Ray tasks) and written to the store like any unit; the icons are units that
the executor runs on its workers, batched like channels. Beside each grid the driver writes the
thumbnails of the images listed in its cells (`atlas_images`) and, per dictionary of the layer,
the directions' places in it (`atlas_places`); both hang off the grid's key and not the other way
round, so a new dictionary or thumbnail size leaves the grid and its icons as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa

from atlas.core.schema import (
    ATLAS_CELLS_SCHEMA,
    ATLAS_IMAGES_SCHEMA,
    ATLAS_PLACES_SCHEMA,
    ATLAS_POINTS_SCHEMA,
    ICONS_SCHEMA,
    keyed_table,
)
from atlas.data.source import ImageSource
from atlas.kinds.actatlas.classes import class_gains
from atlas.kinds.actatlas.collect import VectorSample
from atlas.kinds.actatlas.grid import grid
from atlas.kinds.actatlas.icons import cosine_matrix, render_icons
from atlas.kinds.actatlas.images import THUMB_SIZE, thumbnails
from atlas.kinds.actatlas.layout import LayoutSettings, layout
from atlas.kinds.actatlas.places import places
from atlas.kinds.context import png_bytes
from atlas.kinds.examples.units import ScanWork
from atlas.models import LoadedModel
from atlas.plan.dictionary import layer_dictionary
from atlas.plan.kinds import register_kind
from atlas.plan.layer_names import base_layer
from atlas.plan.sae import layer_sae
from atlas.plan.spec import ActivationAtlasSpec, JobSpec, LayerSpec, RenderSpec
from atlas.plan.units import Unit, make_unit
from atlas.plan.work import Work, render_key_settings
from atlas.store.store import Store

ICONS_PER_UNIT = 32
# Source ids kept per cell for the site's "images that fell in it".
IMAGES_PER_CELL = 8
PLACES_COLUMNS = ("cell", "direction", "projection", "cosine", "cell_rank", "place_rank")


@dataclass(frozen=True)
class LayoutWork(Work):
    """UMAP over a layer's merged vector sample.

    Keyed on what the layer's vectors depend on (the scanned shards' data fingerprints and the
    collecting code), not on the scan units' keys: those also hold every other scanned layer, so a
    new dictionary or layer elsewhere in the job would otherwise redo this layout and its icons.
    """

    kind: ClassVar[str] = "atlas_layout"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    data: tuple[str, ...]  # the finished scans' `ScanWork.data`, sorted
    collector: str  # ScanWork.version: the code that collected the vectors
    samples: int
    max_fit: int
    n_neighbors: int
    min_dist: float


@dataclass(frozen=True)
class GridWork(Work):
    """One grid size over a layout: counts, kept cells and their mean vectors."""

    kind: ClassVar[str] = "atlas_grid"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    layout: str  # the layout unit's key
    size: int
    min_count: int


@dataclass(frozen=True)
class ImagesWork(Work):
    """Thumbnails of the images listed in a grid's kept cells."""

    kind: ClassVar[str] = "atlas_images"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    grid: str  # the grid unit's key
    size: int
    thumb: int


@dataclass(frozen=True)
class PlacesWork(Work):
    """A dictionary's directions against a grid's cells (`atlas.kinds.actatlas.places`)."""

    kind: ClassVar[str] = "atlas_places"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    grid: str  # the grid unit's key; the unit's layer is the dictionary layer (its name holds its hash)
    size: int


@dataclass(frozen=True)
class IconsWork(Work):
    """Icons of a chunk of a grid's kept cells; `inputs` are their mean vectors."""

    kind: ClassVar[str] = "icons"
    # bump when its result changes for the same inputs (3: mean_match; 4: coarse stages >= 32 px)
    version: ClassVar[str] = "4"
    grid: str  # the grid unit's key
    size: int
    render: RenderSpec

    def key_settings(self) -> dict[str, Any]:
        return {**render_key_settings(self.render), "grid": self.grid}


def icons_tables(model: LoadedModel, unit: Unit, work: IconsWork) -> dict[str, pa.Table]:
    """The `icons` table of one icons unit (its worker handler)."""
    means, baseline = (np.asarray(a, np.float32) for a in unit.inputs)
    gains = class_gains(model, unit.layer, means, baseline)
    icons = render_icons(model, unit.layer, means, unit.channels, work.render)
    activations = np.stack([icon.vector for icon in icons])
    own = np.diag(cosine_matrix(activations, means))
    table = {
        "layer": [unit.layer] * len(icons),
        "grid": [work.size] * len(icons),
        "cell": [icon.variant for icon in icons],
        "image": [png_bytes(icon.image) for icon in icons],
        "activation": [icon.activation for icon in icons],
        "cosine": own.astype(np.float32),
        "class": gains.argmax(axis=1).astype(np.int32),
        "class_gain": gains.max(axis=1).astype(np.float32),
    }
    return {"icons": keyed_table(table, ICONS_SCHEMA, unit.key)}


def _sample(store: Store, scans: Sequence[Unit], layer: str, size: int) -> VectorSample:
    parts = [VectorSample.from_table(store.read_unit(u.key, "vectors"), layer, size) for u in scans]
    return reduce(VectorSample.merge, parts)


def _layout_table(sample: VectorSample, layer: str, coords: np.ndarray, key: str) -> pa.Table:
    columns = {
        "layer": [layer] * len(coords),
        "source_id": sample.ids.tolist(),
        "position": sample.positions[layer].astype(np.int32),
        "x": coords[:, 0],
        "y": coords[:, 1],
    }
    return keyed_table(columns, ATLAS_POINTS_SCHEMA, key)


def cells_table(
    layer: str, ids: np.ndarray, coords: np.ndarray, vectors: np.ndarray, size: int, min_count: int, key: str
) -> pa.Table:
    """Every non-empty cell of one grid size: kept ones with their mean, dropped ones counted."""
    result = grid(coords, vectors, size, min_count)
    occupied = np.flatnonzero(result.counts)
    means = dict(zip(result.kept.tolist(), result.means, strict=True))
    columns = {
        "layer": [layer] * len(occupied),
        "grid": [size] * len(occupied),
        "cell": occupied.astype(np.int32),
        "row": (occupied // size).astype(np.int32),
        "column": (occupied % size).astype(np.int32),
        "count": result.counts[occupied],
        "kept": [int(c) in means for c in occupied],
        "mean": [means.get(int(c), []) for c in occupied],
        "source_ids": [ids[result.cell == c][:IMAGES_PER_CELL].tolist() for c in occupied],
    }
    return keyed_table(columns, ATLAS_CELLS_SCHEMA, key)


def _layout_unit(spec: JobSpec, digest: str, layer: str, scans: Sequence[Unit]) -> Unit:
    atlas = spec.activation_atlas
    data = tuple(sorted(u.work.data for u in scans))
    settings = (atlas.samples, atlas.max_fit, atlas.n_neighbors, atlas.min_dist)
    work = LayoutWork(data, ScanWork.version, *settings)
    return make_unit(digest, layer, (), work)


def _grid_units(spec: JobSpec, digest: str, layer: str, layout_key: str) -> list[Unit]:
    atlas = spec.activation_atlas
    return [make_unit(digest, layer, (), GridWork(layout_key, size, atlas.min_count)) for size in atlas.grids]


def dictionaries(spec: JobSpec, layer: str) -> list[LayerSpec]:
    """The job's dictionary and SAE layers over `layer` (already attached: named
    `<layer>@<file>:<hash>`)."""
    return [d for d in spec.layers if (d.dictionary or d.sae) and base_layer(d.name) == layer]


def _directions(model: LoadedModel, entry: LayerSpec) -> tuple[np.ndarray, np.ndarray]:
    """A dictionary layer's (K, C) directions and the point they start from (C,): its vectors
    from the origin, or an SAE's decoder rows from b_dec (what the decoder adds its features to)."""
    if entry.sae is not None:
        sae = layer_sae(model, entry)
        return sae.w_dec, sae.b_dec
    vectors = layer_dictionary(model, entry).vectors
    return vectors, np.zeros(vectors.shape[1], np.float32)


def _grid_extras(spec: JobSpec, digest: str, grid_unit: Unit) -> list[Unit]:
    """The units that read one grid on the driver: its thumbnails and each dictionary's places."""
    layer = grid_unit.layer
    key, size = grid_unit.key, grid_unit.work.size
    units = [make_unit(digest, layer, (), ImagesWork(key, size, THUMB_SIZE))]
    units += [make_unit(digest, d.name, (), PlacesWork(key, size)) for d in dictionaries(spec, layer)]
    return units


def planned_units(spec: JobSpec, digest: str, store: Store, scans: Sequence[Unit]) -> list[Unit]:
    """The stage's units known without computing anything (icons only of grids already stored)."""
    units = []
    for layer in spec.activation_atlas.layers:
        layout_unit = _layout_unit(spec, digest, layer, scans)
        units.append(layout_unit)
        for grid_unit in _grid_units(spec, digest, layer, layout_unit.key):
            units += [grid_unit, *_grid_extras(spec, digest, grid_unit)]
            if spec.activation_atlas.icons and store.has(grid_unit.key, verify=False):
                units += _icon_units(spec, digest, layer, grid_unit.work.size, grid_unit.key, store)
    return units


class Steps(Protocol):
    """What the stage needs of the driver loop (atlas.run.driver.Driver): whether a unit the stage
    computes itself is to be computed, committing it, announcing units found during the run, and
    running units on the workers."""

    def needed(self, unit: Unit) -> bool: ...

    def write(self, unit: Unit, tables: dict[str, pa.Table]) -> None: ...

    def announce(self, units: Sequence[Unit]) -> None: ...

    def run(self, units: Sequence[Unit]) -> None: ...


def run_atlas(
    spec: JobSpec,
    digest: str,
    store: Store,
    scans: Sequence[Unit],
    steps: Steps,
    context: tuple[LoadedModel, ImageSource],
) -> set[str]:
    """Lay out, grid and (as units) render every atlas layer; returns the keys this stage owns.

    `context` is the driver's model (receptive fields of the thumbnails) and the scanned data.
    `steps` (the driver loop) commits every unit the stage computes itself and announces, as
    "planned", each icons unit that became known here (its grid was computed in this run), so a
    progress total can grow.
    """
    atlas: ActivationAtlasSpec = spec.activation_atlas
    scans = sorted(scans, key=lambda u: u.key)
    known = {u.key for u in planned_units(spec, digest, store, scans)}
    for layer in atlas.layers:
        settings = LayoutSettings(
            atlas.n_neighbors, atlas.min_dist, max_fit=atlas.max_fit, seed=spec.render.seed
        )
        layout_unit = _layout_unit(spec, digest, layer, scans)
        sample: VectorSample | None = None
        if steps.needed(layout_unit):
            sample = _sample(store, scans, layer, atlas.samples)
            coords = layout(sample.vectors[layer], settings)
            steps.write(layout_unit, {"atlas_layout": _layout_table(sample, layer, coords, layout_unit.key)})
        points = store.read_unit(layout_unit.key, "atlas_layout")
        coords = np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], axis=1)
        for grid_unit in _grid_units(spec, digest, layer, layout_unit.key):
            if steps.needed(grid_unit):
                sample = sample or _sample(store, scans, layer, atlas.samples)
                ids = np.array(points.column("source_id").to_pylist())
                size = grid_unit.work.size
                table = cells_table(
                    layer, ids, coords, sample.vectors[layer], size, atlas.min_count, grid_unit.key
                )
                steps.write(grid_unit, {"atlas_grid": table})
                if atlas.icons:  # announced now, while the driver still has units of its own to report
                    icons = _icon_units(spec, digest, layer, size, grid_unit.key, store)
                    steps.announce([u for u in icons if u.key not in known])
            for extra in _grid_extras(spec, digest, grid_unit):
                if steps.needed(extra):
                    cells = store.read_unit(grid_unit.key, "atlas_grid").filter(pa.compute.field("kept"))
                    if isinstance(extra.work, ImagesWork):
                        steps.write(extra, {"atlas_images": images_table(context, points, cells, extra)})
                    else:
                        steps.write(extra, {"atlas_places": places_table(spec, context[0], cells, extra)})
    units = planned_units(spec, digest, store, scans)
    steps.run([u for u in units if u.kind == IconsWork.kind])
    return {u.key for u in units}


def images_table(
    context: tuple[LoadedModel, ImageSource], points: pa.Table, cells: pa.Table, unit: Unit
) -> pa.Table:
    """The `atlas_images` rows of a grid's kept cells: each listed image cut at its sampled position."""
    position = dict(
        zip(points.column("source_id").to_pylist(), points.column("position").to_pylist(), strict=True)
    )
    listed = [
        (cell, source_id, position[source_id])
        for cell, ids in zip(
            cells.column("cell").to_pylist(), cells.column("source_ids").to_pylist(), strict=True
        )
        for source_id in ids
    ]
    model, source = context
    thumbs = thumbnails(model, unit.layer, source, [(i, p) for _, i, p in listed], unit.work.thumb)
    found = [(c, i, p) for c, i, p in listed if (i, p) in thumbs]
    columns = {
        "layer": [unit.layer] * len(found),
        "grid": [unit.work.size] * len(found),
        "cell": [c for c, _, _ in found],
        "source_id": [i for _, i, _ in found],
        "position": [p for _, _, p in found],
        "image": [thumbs[(i, p)] for _, i, p in found],
    }
    return keyed_table(columns, ATLAS_IMAGES_SCHEMA, unit.key)


def places_table(spec: JobSpec, model: LoadedModel, cells: pa.Table, unit: Unit) -> pa.Table:
    """The `atlas_places` rows of one dictionary (the unit's layer) over a grid's kept cells."""
    if cells.num_rows == 0:
        return ATLAS_PLACES_SCHEMA.empty_table()
    layer = base_layer(unit.layer)
    (entry,) = [d for d in dictionaries(spec, layer) if d.name == unit.layer]
    means = np.array(cells.column("mean").to_pylist(), np.float32)  # (cells, C) on the base layer
    vectors, origin = _directions(model, entry)  # (K, C), (C,)
    ranked = places(cells.column("cell").to_numpy(), means - origin, vectors)
    count = len(ranked.cell)
    columns = {
        "layer": [unit.layer] * count,
        "atlas_layer": [layer] * count,
        "grid": [unit.work.size] * count,
        **{name: getattr(ranked, name) for name in PLACES_COLUMNS},
    }
    return keyed_table(columns, ATLAS_PLACES_SCHEMA, unit.key)


def _icon_units(spec: JobSpec, digest: str, layer: str, size: int, grid_key: str, store: Store) -> list[Unit]:
    cells = store.read_unit(grid_key, "atlas_grid").filter(pa.compute.field("kept"))
    ids = cells.column("cell").to_pylist()
    if not ids:
        return []
    means = np.array(cells.column("mean").to_pylist(), np.float32)
    counts = cells.column("count").to_numpy()
    baseline = (means * counts[:, None]).sum(axis=0) / counts.sum()  # the mean of the kept samples
    work = IconsWork(grid_key, size, spec.render)
    return [
        make_unit(
            digest, layer, ids[i : i + ICONS_PER_UNIT], work, inputs=(means[i : i + ICONS_PER_UNIT], baseline)
        )
        for i in range(0, len(ids), ICONS_PER_UNIT)
    ]


def _icons(ctx: Any, unit: Unit, work: IconsWork) -> dict[str, pa.Table]:
    return icons_tables(ctx.model, unit, work)


def _icons_seconds(unit: Unit, spec: JobSpec, speed: Any) -> float:
    """One optimized picture per cell, at the job's render steps."""
    return len(unit.channels) * spec.render.steps / speed.render_image_steps_per_s


register_kind(
    IconsWork,
    phase="stage",
    handler=_icons,
    cost=_icons_seconds,
    tables=("icons",),
    reads=("render", "activation_atlas"),
)
