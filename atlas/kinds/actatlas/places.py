"""A dictionary direction's place in its layer's activation atlas, and a cell's directions.

Both come from one matrix: each kept cell's mean vector against each direction of the dictionary.

- A cell's contributing directions rank by projection (the cell mean's dot product with the
  direction): that is the direction's activation at the cell's mean, the same measure the cell
  panel uses for basis channels (a basis channel's projection is the mean's component), so
  channels and directions are compared on one scale.
- A direction's place ranks cells by cosine instead: projections grow with the mean's norm, so by
  projection the few loudest cells would be every direction's place; the cosine asks where the
  map points the direction's way, whatever the cell's magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_DIRECTIONS = 5  # per cell, as many as the basis channels the cell panel lists
TOP_PLACES = 3  # cells per direction and grid size


@dataclass(frozen=True)
class Places:
    """Rows of (cell, direction) pairs that are in either ranking; -1 where a pair is not ranked."""

    cell: np.ndarray  # [n] int64: cell ids
    direction: np.ndarray  # [n] int64
    projection: np.ndarray  # [n] float32
    cosine: np.ndarray  # [n] float32
    cell_rank: np.ndarray  # [n] int64: the direction's rank within the cell
    place_rank: np.ndarray  # [n] int64: the cell's rank among the direction's places


def places(
    cells: np.ndarray,
    means: np.ndarray,
    directions: np.ndarray,
    top: int = TOP_DIRECTIONS,
    places_per_direction: int = TOP_PLACES,
) -> Places:
    """Rank the (k, C) cell `means` (ids `cells`) against the (K, C) `directions` both ways."""
    projection = means @ directions.T  # (k, K)
    norms = np.linalg.norm(means, axis=1, keepdims=True) * np.linalg.norm(directions, axis=1)
    cosine = projection / np.maximum(norms, 1e-12)
    cell_rank = np.full(projection.shape, -1, np.int64)
    by_cell = np.argsort(-projection, axis=1, kind="stable")[:, :top]
    np.put_along_axis(cell_rank, by_cell, np.arange(by_cell.shape[1])[None], axis=1)
    place_rank = np.full(projection.shape, -1, np.int64)
    by_direction = np.argsort(-cosine, axis=0, kind="stable")[:places_per_direction]
    np.put_along_axis(place_rank, by_direction, np.arange(by_direction.shape[0])[:, None], axis=0)
    row, column = np.nonzero((cell_rank >= 0) | (place_rank >= 0))
    return Places(
        np.asarray(cells)[row],
        column,
        projection[row, column].astype(np.float32),
        cosine[row, column].astype(np.float32),
        cell_rank[row, column],
        place_rank[row, column],
    )
