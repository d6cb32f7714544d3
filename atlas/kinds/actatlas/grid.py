"""A square grid over a 2-D layout: which cell each sample falls in, and each cell's mean vector.

The grid spans the layout's bounding box; a sample on the upper edge belongs to the last cell, so
every sample lands in exactly one cell. Cells with fewer than `min_count` samples are dropped (their
mean is noise, and the article drops them too); their samples are counted as dropped, not lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atlas.core.errors import AtlasError


class GridError(AtlasError, ValueError):
    """A grid that cannot be laid as asked."""


@dataclass(frozen=True)
class Grid:
    """One grid size over one layout. Cells are numbered row * size + column (row = y)."""

    size: int
    bounds: tuple[float, float, float, float]  # x0, y0, x1, y1
    cell: np.ndarray  # [n] int64: each sample's cell
    counts: np.ndarray  # [size * size] int64: samples per cell, dropped cells included
    kept: np.ndarray  # [k] int64: ids of the cells with at least min_count samples
    means: np.ndarray  # [k, C] float32: mean vector of each kept cell
    dropped_samples: int  # samples in cells with too few samples

    @property
    def dropped_cells(self) -> int:
        """Cells that had some samples but too few to keep."""
        return int(np.count_nonzero(self.counts)) - len(self.kept)


def bounds_of(coords: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = coords.min(axis=0)
    x1, y1 = coords.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def cell_of(coords: np.ndarray, size: int, bounds: tuple[float, float, float, float]) -> np.ndarray:
    """Each point's cell id; points outside `bounds` are clipped to the border cells."""
    x0, y0, x1, y1 = bounds
    span = np.array([max(x1 - x0, 1e-12), max(y1 - y0, 1e-12)])
    scaled = (coords - np.array([x0, y0])) / span * size
    column, row = np.clip(np.floor(scaled).astype(np.int64), 0, size - 1).T
    return row * size + column


def grid(coords: np.ndarray, vectors: np.ndarray, size: int, min_count: int = 1) -> Grid:
    """Bin `coords` (n, 2) into a size x size grid and average `vectors` (n, C) per kept cell."""
    if size < 1 or min_count < 1:
        raise GridError(f"grid size and min_count must be at least 1, got {size} and {min_count}")
    if len(coords) == 0 or len(coords) != len(vectors):
        raise GridError(
            f"need as many coordinates as vectors (and some), got {len(coords)} and {len(vectors)}"
        )
    bounds = bounds_of(coords)
    cell = cell_of(coords, size, bounds)
    counts = np.bincount(cell, minlength=size * size)
    kept = np.flatnonzero(counts >= min_count)
    sums = np.zeros((size * size, vectors.shape[1]), np.float64)
    np.add.at(sums, cell, vectors)
    means = (sums[kept] / counts[kept, None]).astype(np.float32)
    dropped = int(counts.sum() - counts[kept].sum())
    return Grid(size, bounds, cell, counts, kept, means, dropped)
