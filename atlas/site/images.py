"""Writing a layer's pictures into the site folder, under names the builder controls.

File names are made here from the layer slug, channel numbers and fixed words only, never
from strings found in the store, so nothing in a shard can choose where a file lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atlas.site.sheets import png_size, sheet_layout
from atlas.site.workers import SheetJobs


@dataclass(frozen=True)
class Picture:
    """An image file in the site: its path relative to the site root and its pixel size."""

    src: str
    width: int
    height: int


@dataclass(frozen=True)
class SheetPicture:
    """A grid of examples in one file, with the values shown for each cell."""

    picture: Picture
    columns: int
    rows: int
    values: tuple[float, ...]


class LayerImages:
    """Writes one layer's image files into `img/<slug>/` of the site being built."""

    def __init__(self, site_root: Path, slug: str, jobs: SheetJobs):
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

    def write_sheet(
        self, name: str, pngs: Sequence[bytes], values: Sequence[float] = (), columns: int | None = None
    ) -> SheetPicture:
        """Queue several PNGs to become one JPEG grid; `values` label the cells in reading order.

        The layout comes from the PNG headers, so the page can be written while the sheet is
        still being composed; the builder drains the jobs before it calls the layer done.
        """
        width, height, columns, rows = sheet_layout(pngs, columns)
        self.jobs.submit(self.folder / f"{name}.jpg", pngs, columns)
        picture = Picture(f"{self.prefix}/{name}.jpg", width, height)
        return SheetPicture(picture, columns, rows, tuple(float(v) for v in values))
