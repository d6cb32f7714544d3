"""The activation-atlas view of a layer: its grids of icons, zoomable between grid sizes.

Reads the layer's `atlas_grid` and `icons` tables (docs/STORE.md), writes each icon as a PNG file
(loaded lazily by the page) and returns what the `actatlas.html` template shows: per grid size,
every kept cell with its count, the images that fell in it and the channels that contribute most
to its direction (the largest components of its mean vector, linked to their channel views).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlas.store import Store

TOP_CHANNELS = 5


@dataclass(frozen=True)
class AtlasCell:
    cell: int
    row: int  # 0 at the top of the page (the layout's y grows upward)
    column: int
    count: int
    icon: str  # path relative to the site root, "" without an icon
    klass: int  # the class whose logit the cell's direction raises most (-1: not known)
    channels: tuple[tuple[int, float], ...]  # (channel, component), largest first
    images: tuple[str, ...]


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


def read_atlas(store: Store, layer: str, root: Path, slug: str) -> list[AtlasGrid]:
    """The layer's grids, smallest first (empty when the layer has no activation atlas)."""
    table = store.read("atlas_grid", layer)
    if table is None:
        return []
    icons = _icons(store, layer, root / "img" / slug / "atlas", slug)
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
                    tuple(r["source_ids"]),
                )
            )
        dropped = [r for r in here if not r["kept"]]
        grids.append(AtlasGrid(size, tuple(cells), len(dropped), sum(r["count"] for r in dropped)))
    return grids
