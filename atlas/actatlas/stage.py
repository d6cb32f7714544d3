"""The activation-atlas stage of a job: after the scans, per atlas layer, layout -> grids -> icons.

Each step is a unit with a content key built on the key of the step it reads, so a changed
setting recomputes exactly what depends on it: a new grid size adds one grid and its icons and
keeps the layout; new render settings redo the icons only; new data redoes everything.

The layout and the grids are computed by the driver (UMAP fits on one machine; its `transform`
places the rest in Ray tasks) and written to the store like any unit; the icons are units that
the executor runs on its workers, batched like channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from atlas.actatlas.classes import class_gains
from atlas.actatlas.collect import VectorSample
from atlas.actatlas.grid import grid
from atlas.actatlas.icons import cosine_matrix, render_icons
from atlas.actatlas.layout import LayoutSettings, layout
from atlas.models import LoadedModel
from atlas.plan import Unit, make_unit
from atlas.schema import ATLAS_CELLS_SCHEMA, ATLAS_POINTS_SCHEMA, ICONS_SCHEMA
from atlas.spec import ActivationAtlasSpec, JobSpec, RenderSpec
from atlas.store import Store
from atlas.units import png_bytes
from atlas.work import _render_key_settings, _Work

ICONS_PER_UNIT = 32
# Source ids kept per cell for the site's "images that fell in it".
IMAGES_PER_CELL = 8


@dataclass(frozen=True)
class LayoutWork(_Work):
    """UMAP over a layer's merged vector sample."""

    kind: ClassVar[str] = "atlas_layout"
    scans: tuple[str, ...]
    samples: int
    max_fit: int
    n_neighbors: int
    min_dist: float


@dataclass(frozen=True)
class GridWork(_Work):
    """One grid size over a layout: counts, kept cells and their mean vectors."""

    kind: ClassVar[str] = "atlas_grid"
    layout: str  # the layout unit's key
    size: int
    min_count: int


@dataclass(frozen=True)
class IconsWork(_Work):
    """Icons of a chunk of a grid's kept cells; `inputs` are their mean vectors."""

    kind: ClassVar[str] = "icons"
    grid: str  # the grid unit's key
    size: int
    render: RenderSpec
    cosine_power: float

    def key_settings(self) -> dict[str, Any]:
        return {**_render_key_settings(self.render), "grid": self.grid, "cosine_power": self.cosine_power}


def icons_tables(model: LoadedModel, unit: Unit, work: IconsWork) -> dict[str, pa.Table]:
    """The `icons` table of one icons unit (registered as a unit kind in atlas.units)."""
    means, baseline = (np.asarray(a, np.float32) for a in unit.inputs)
    gains = class_gains(model, unit.layer, means, baseline)
    icons = render_icons(model, unit.layer, means, unit.channels, work.render, work.cosine_power)
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
        "unit_key": [unit.key] * len(icons),
    }
    return {"icons": pa.table(table, schema=ICONS_SCHEMA)}


def _sample(store: Store, scans: Sequence[str], layer: str, size: int) -> VectorSample:
    parts = [VectorSample.from_table(store.read_unit(key, "vectors"), layer, size) for key in scans]
    return reduce(VectorSample.merge, parts)


def _layout_table(sample: VectorSample, layer: str, coords: np.ndarray, key: str) -> pa.Table:
    columns = {
        "layer": [layer] * len(coords),
        "source_id": sample.ids.tolist(),
        "position": sample.positions[layer].astype(np.int32),
        "x": coords[:, 0],
        "y": coords[:, 1],
        "unit_key": [key] * len(coords),
    }
    return pa.table(columns, schema=ATLAS_POINTS_SCHEMA)


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
        "unit_key": [key] * len(occupied),
    }
    return pa.table(columns, schema=ATLAS_CELLS_SCHEMA)


def _layout_unit(spec: JobSpec, digest: str, layer: str, scans: tuple[str, ...]) -> Unit:
    atlas = spec.activation_atlas
    work = LayoutWork(scans, atlas.samples, atlas.max_fit, atlas.n_neighbors, atlas.min_dist)
    return make_unit(digest, layer, (), work)


def _grid_units(spec: JobSpec, digest: str, layer: str, layout_key: str) -> list[Unit]:
    atlas = spec.activation_atlas
    return [make_unit(digest, layer, (), GridWork(layout_key, size, atlas.min_count)) for size in atlas.grids]


def planned_units(spec: JobSpec, digest: str, store: Store, scans: Sequence[str]) -> list[Unit]:
    """The stage's units known without computing anything (icons only of grids already stored)."""
    units = []
    for layer in spec.activation_atlas.layers:
        layout_unit = _layout_unit(spec, digest, layer, tuple(sorted(scans)))
        units.append(layout_unit)
        for grid_unit in _grid_units(spec, digest, layer, layout_unit.key):
            units.append(grid_unit)
            if spec.activation_atlas.icons and store.has(grid_unit.key, verify=False):
                units += _icon_units(spec, digest, layer, grid_unit.work.size, grid_unit.key, store)
    return units


def run_atlas(
    spec: JobSpec,
    digest: str,
    store: Store,
    scans: Sequence[str],
    run_units: Callable[[list[Unit]], None],
    force: bool = False,
) -> set[str]:
    """Lay out, grid and (as units) render every atlas layer; returns the keys this stage owns."""
    atlas: ActivationAtlasSpec = spec.activation_atlas
    scans = tuple(sorted(scans))
    for layer in atlas.layers:
        settings = LayoutSettings(
            atlas.n_neighbors, atlas.min_dist, max_fit=atlas.max_fit, seed=spec.render.seed
        )
        layout_unit = _layout_unit(spec, digest, layer, scans)
        sample: VectorSample | None = None
        if force or not store.has(layout_unit.key):
            sample = _sample(store, scans, layer, atlas.samples)
            coords = layout(sample.vectors[layer], settings)
            table = _layout_table(sample, layer, coords, layout_unit.key)
            store.write_unit(layout_unit.key, "atlas_layout", layer, table)
        points = store.read_unit(layout_unit.key, "atlas_layout")
        coords = np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], axis=1)
        for grid_unit in _grid_units(spec, digest, layer, layout_unit.key):
            if force or not store.has(grid_unit.key):
                sample = sample or _sample(store, scans, layer, atlas.samples)
                ids = np.array(points.column("source_id").to_pylist())
                size = grid_unit.work.size
                table = cells_table(
                    layer, ids, coords, sample.vectors[layer], size, atlas.min_count, grid_unit.key
                )
                store.write_unit(grid_unit.key, "atlas_grid", layer, table)
    units = planned_units(spec, digest, store, scans)
    run_units([u for u in units if u.kind == "icons"])
    return {u.key for u in units}


def _icon_units(spec: JobSpec, digest: str, layer: str, size: int, grid_key: str, store: Store) -> list[Unit]:
    cells = store.read_unit(grid_key, "atlas_grid").filter(pa.compute.field("kept"))
    ids = cells.column("cell").to_pylist()
    if not ids:
        return []
    means = np.array(cells.column("mean").to_pylist(), np.float32)
    counts = cells.column("count").to_numpy()
    baseline = (means * counts[:, None]).sum(axis=0) / counts.sum()  # the mean of the kept samples
    work = IconsWork(grid_key, size, spec.render, spec.activation_atlas.cosine_power)
    return [
        make_unit(
            digest, layer, ids[i : i + ICONS_PER_UNIT], work, inputs=(means[i : i + ICONS_PER_UNIT], baseline)
        )
        for i in range(0, len(ids), ICONS_PER_UNIT)
    ]
