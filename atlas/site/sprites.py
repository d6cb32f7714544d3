"""The layout of a channel's sprite: where each optimized image and example grid sits.

Every channel of a layer shares one layout (sizes and counts are the layer's largest), so the
page crops each cell out of the sprite with a handful of CSS rules per layer rather than
per-image styles, and rows line up before any image has loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from atlas.site.sheets import Placement, grid_columns

GUTTER = 2  # px between regions, so scaling a crop never samples its neighbour


@dataclass(frozen=True)
class Region:
    """A rectangle of the sprite holding one image or a grid of `columns` x `rows` cells."""

    x: int
    y: int
    width: int
    height: int
    columns: int = 1
    rows: int = 1

    def cell(self, index: int) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the index-th cell, in reading order."""
        cell_w, cell_h = self.width // self.columns, self.height // self.rows
        return (
            self.x + (index % self.columns) * cell_w,
            self.y + (index // self.columns) * cell_h,
            cell_w,
            cell_h,
        )


@dataclass(frozen=True)
class SpriteLayout:
    width: int
    height: int
    regions: dict[str, Region]

    def aspect(self, column: str) -> float:
        region = self.regions[column]
        return round(region.width / region.height, 4)

    def crop_style(self, column: str) -> str:
        """CSS that makes an `<img>` of the whole sprite show only this column's region."""
        region = self.regions[column]
        return (
            f"width:{100 * self.width / region.width:.4g}%;"
            f"height:{100 * self.height / region.height:.4g}%;"
            f"left:{-100 * region.x / region.width:.4g}%;"
            f"top:{-100 * region.y / region.height:.4g}%"
        )

    def row_fit(self, columns: Sequence[str], gap: int, extra: int) -> tuple[float, int]:
        """(total aspect ratio, fixed px) of a row showing `columns`: a row `h` px tall is
        `h * total + fixed + number column` wide, so the page can pick `h` to fit the window.
        `extra` is the px of margins and padding beyond one `gap` per cell."""
        shown = [c for c in columns if c in self.regions]
        return round(sum(self.aspect(c) for c in shown), 4), gap * len(shown) + extra

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Every region as (x, y, width, height): the edges to extend into the gutters."""
        return [(r.x, r.y, r.width, r.height) for r in self.regions.values()]

    def placements(
        self, column: str, pngs: Sequence[bytes], slots: Sequence[int] | None = None
    ) -> list[Placement]:
        """The pictures of one region in its cells: in reading order, or each in the cell of its
        slot (a quantile group's images start its row, whatever the groups before hold)."""
        region = self.regions[column]
        cells = range(len(pngs)) if slots is None else slots
        return [(*region.cell(index), png) for index, png in zip(cells, pngs, strict=True)]


def sprite_layout(
    optimized: Sequence[str],
    optimized_size: tuple[int, int],
    diversity: int,
    buckets: Sequence[tuple[str, int]],
    crop_size: tuple[int, int],
    diverse: str = "diversity",
    widths: Mapping[str, int] | None = None,
) -> SpriteLayout:
    """Optimized images and the diversity set (column `diverse`) on the first row, example grids
    on the second; `widths` fixes the columns of some buckets' grids (the quantile groups: one
    group a row)."""
    regions: dict[str, Region] = {}
    opt_w, opt_h = optimized_size
    x = 0
    for objective in optimized:
        regions[objective] = Region(x, 0, opt_w, opt_h)
        x += opt_w + GUTTER
    if diversity:
        regions[diverse] = Region(x, 0, opt_w * diversity, opt_h, diversity, 1)
        x += opt_w * diversity + GUTTER
    first_row_height = opt_h + GUTTER if regions else 0
    crop_w, crop_h = crop_size
    bucket_x, grid_height = 0, 0
    for bucket, count in buckets:
        columns = (widths or {}).get(bucket) or grid_columns(count)
        rows = -(-count // columns)
        regions[bucket] = Region(bucket_x, first_row_height, crop_w * columns, crop_h * rows, columns, rows)
        bucket_x += crop_w * columns + GUTTER
        grid_height = max(grid_height, crop_h * rows)
    return SpriteLayout(max(x, bucket_x, 1), max(first_row_height + grid_height, 1), regions)
