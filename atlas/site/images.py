"""Writing a layer's pictures into the site folder, under names the builder controls.

File names are made here from the layer slug, channel numbers and fixed words only, never
from strings found in the store, so nothing in a shard can choose where a file lands.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atlas.site.sheets import Box, Placement, grid_placements, png_size
from atlas.site.workers import ComposeJobs


@dataclass(frozen=True)
class Picture:
    """An image file in the site: its path relative to the site root and its pixel size."""

    src: str
    width: int
    height: int


@dataclass(frozen=True)
class SheetPicture:
    """A grid of images in one file, with the values shown for each cell."""

    picture: Picture
    columns: int
    rows: int
    values: tuple[float, ...]


class LayerImages:
    """Writes one layer's image files into `img/<slug>/` of the site being built.

    Composed images (sprites, grids) are queued on `jobs`; their size is known from the PNG
    headers at once, so pages can be written while workers compose them. The builder drains
    the jobs before it calls the layer done.
    """

    def __init__(self, site_root: Path, slug: str, jobs: ComposeJobs):
        self.root = site_root
        self.folder = site_root / "img" / slug
        self.prefix = f"img/{slug}"
        self.jobs = jobs
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, png: bytes) -> Picture:
        """Copy PNG bytes as they are (no decode), reading the size from the header."""
        width, height = png_size(png)
        (self.folder / f"{name}.png").write_bytes(png)
        return Picture(f"{self.prefix}/{name}.png", width, height)

    def compose(
        self, name: str, width: int, height: int, placements: Sequence[Placement], boxes: Sequence[Box] = ()
    ) -> Picture:
        """Queue a JPEG of `width` x `height` with each PNG pasted at its place."""
        self.jobs.submit(self.folder / f"{name}.jpg", width, height, placements, boxes)
        return Picture(f"{self.prefix}/{name}.jpg", width, height)

    def link(self, name: str, earlier: Path, width: int, height: int) -> Picture:
        """Reuse an identical file of the previous build: a hard link (a copy across devices)."""
        target = self.folder / f"{name}{earlier.suffix}"
        try:
            os.link(earlier, target)
        except OSError:
            shutil.copyfile(earlier, target)
        return Picture(f"{self.prefix}/{target.name}", width, height)

    def write_sheet(
        self, name: str, pngs: Sequence[bytes], values: Sequence[float] = (), columns: int | None = None
    ) -> SheetPicture:
        """Queue a grid of PNGs as one JPEG; `values` label the cells in reading order."""
        width, height, columns, rows, placements = grid_placements(pngs, columns)
        picture = self.compose(name, width, height, placements)
        return SheetPicture(picture, columns, rows, tuple(float(v) for v in values))
