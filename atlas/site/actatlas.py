"""The activation-atlas view of a layer: its grids of icons, zoomable between grid sizes.

Reads the layer's `atlas_grid`, `icons`, `atlas_images` and its dictionaries' `atlas_places`
tables (docs/STORE.md), writes each icon and cell thumbnail as a PNG file (the page loads icons
lazily and thumbnails only when their cell is opened) and returns what the `actatlas.html` template
shows: per grid size, every kept cell with its count, the images that fell in it, the channels
that contribute most to its direction (the largest components of its mean vector) and, where the
layer has dictionaries, their directions that contribute most, all linked to their channel views.
`read_places` gives a dictionary layer's page the way back: each direction's cells.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from atlas.store.store import Store

TOP_CHANNELS = 5


@dataclass(frozen=True)
class Dictionary:
    """A dictionary layer over the atlas layer, as the site names it."""

    name: str
    slug: str
    names: Sequence[str]  # per direction; empty: "direction i"

    def label(self, direction: int) -> str:
        return self.names[direction] if direction < len(self.names) else f"direction {direction}"


@dataclass(frozen=True)
class AtlasCell:
    cell: int
    row: int  # 0 at the top of the page (the layout's y grows upward)
    column: int
    count: int
    icon: str  # path relative to the site root, "" without an icon
    klass: int  # the class whose logit the cell's direction raises most (-1: not known)
    channels: tuple[tuple[int, float], ...]  # (channel, component), largest first
    images: tuple[tuple[str, str], ...]  # (source id, thumbnail path or "")
    directions: tuple[tuple[str, int, str, float], ...] = ()  # (layer page, direction, name, projection)


@dataclass(frozen=True)
class AtlasGrid:
    size: int
    cells: tuple[AtlasCell, ...]
    dropped_cells: int
    dropped_samples: int

    @property
    def classes(self) -> list[tuple[int, int]]:
        """(class, cells) of the classes the cells raise most, commonest first."""
        counts: dict[int, int] = {}
        for cell in self.cells:
            if cell.klass >= 0:
                counts[cell.klass] = counts.get(cell.klass, 0) + 1
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _icons(store: Store, layer: str, folder: Path, slug: str) -> dict[tuple[int, int], tuple[str, int]]:
    """Write every icon of the layer as a file; (grid, cell) -> (its path from the site root, class)."""
    table = store.read("icons", layer, columns=["grid", "cell", "image", "class"])
    if table is None:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    columns = (table.column(c).to_pylist() for c in ("grid", "cell", "image", "class"))
    for size, cell, image, klass in zip(*columns, strict=True):
        name = f"g{size}-c{cell}.png"
        (folder / name).write_bytes(image)
        found[(size, cell)] = (f"img/{slug}/atlas/{name}", klass)
    return found


def _thumbnails(store: Store, layer: str, folder: Path, slug: str) -> dict[tuple[int, int, str], str]:
    """Write each cell thumbnail once (named by image and position); (grid, cell, id) -> its path."""
    table = store.read("atlas_images", layer, columns=["grid", "cell", "source_id", "position", "image"])
    if table is None:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    columns = (table.column(c).to_pylist() for c in ("grid", "cell", "source_id", "position", "image"))
    for size, cell, source_id, position, image in zip(*columns, strict=True):
        name = hashlib.sha256(f"{source_id}\0{position}".encode()).hexdigest()[:16] + ".png"
        if not (folder / name).exists():
            (folder / name).write_bytes(image)
        found[(size, cell, source_id)] = f"img/{slug}/atlas/cells/{name}"
    return found


def _directions(
    store: Store, dictionaries: Sequence[Dictionary]
) -> dict[tuple[int, int], list[tuple[str, int, str, float]]]:
    """(grid, cell) -> the dictionaries' directions that contribute most to it, largest first."""
    found: dict[tuple[int, int], list[tuple[float, int, tuple[str, int, str, float]]]] = {}
    for dictionary in dictionaries:
        table = store.read("atlas_places", dictionary.name)
        if table is None:
            continue
        for row in table.filter(pc.greater_equal(table.column("cell_rank"), 0)).to_pylist():
            entry = (
                f"{dictionary.slug}.html",
                row["direction"],
                dictionary.label(row["direction"]),
                row["projection"],
            )
            found.setdefault((row["grid"], row["cell"]), []).append(
                (-row["projection"], row["cell_rank"], entry)
            )
    return {
        cell: [entry for *_, entry in sorted(rows, key=lambda r: r[:2])][:TOP_CHANNELS]
        for cell, rows in found.items()
    }


def read_places(store: Store, layer: str) -> tuple[str, dict[int, list[tuple[int, int, float]]]]:
    """A dictionary layer's places: (its atlas layer, direction -> [(grid, cell, cosine)] best first)."""
    table = store.read("atlas_places", layer)
    if table is None:
        return "", {}
    ranked = table.filter(pc.greater_equal(table.column("place_rank"), 0)).to_pylist()
    places: dict[int, list[tuple[int, int, float]]] = {}
    for row in sorted(ranked, key=lambda r: (r["grid"], r["place_rank"])):
        places.setdefault(row["direction"], []).append((row["grid"], row["cell"], round(row["cosine"], 3)))
    return (ranked[0]["atlas_layer"] if ranked else ""), places


def read_atlas(
    store: Store, layer: str, root: Path, slug: str, dictionaries: Sequence[Dictionary] = ()
) -> list[AtlasGrid]:
    """The layer's grids, smallest first (empty when the layer has no activation atlas)."""
    table = store.read("atlas_grid", layer)
    if table is None:
        return []
    icons = _icons(store, layer, root / "img" / slug / "atlas", slug)
    thumbs = _thumbnails(store, layer, root / "img" / slug / "atlas" / "cells", slug)
    directions = _directions(store, dictionaries)
    rows = table.to_pylist()
    grids = []
    for size in sorted({r["grid"] for r in rows}):
        here = [r for r in rows if r["grid"] == size]
        kept = [r for r in here if r["kept"]]
        cells = []
        for r in kept:
            mean = np.asarray(r["mean"], np.float32)
            top = np.argsort(-mean)[:TOP_CHANNELS]
            cells.append(
                AtlasCell(
                    r["cell"],
                    size - 1 - r["row"],
                    r["column"],
                    r["count"],
                    *icons.get((size, r["cell"]), ("", -1)),
                    tuple((int(c), float(mean[c])) for c in top),
                    tuple((i, thumbs.get((size, r["cell"], i), "")) for i in r["source_ids"]),
                    tuple(directions.get((size, r["cell"]), ())),
                )
            )
        dropped = [r for r in here if not r["kept"]]
        grids.append(AtlasGrid(size, tuple(cells), len(dropped), sum(r["count"] for r in dropped)))
    return grids
