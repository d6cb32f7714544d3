"""2-D layout of activation vectors with UMAP (the optional `actatlas` extra).

UMAP runs on one machine, so it is fitted on at most `max_fit` vectors and the rest are placed with
the fitted model's `transform`, in Ray tasks when Ray is running (each task places one chunk). The
vectors arrive hash-ordered from `VectorSample`, so the first `max_fit` rows are a uniform sample.
Defaults follow the Activation Atlas article's notebook: cosine metric, 20 neighbours, min_dist 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.core.errors import AtlasError

N_NEIGHBORS = 20
MIN_DIST = 0.01
METRIC = "cosine"
MAX_FIT = 100_000
PLACE_CHUNK = 20_000


class LayoutError(AtlasError, RuntimeError):
    """UMAP is missing or the vectors cannot be laid out."""


@dataclass(frozen=True)
class LayoutSettings:
    """Everything that changes the layout (and so enters its content key)."""

    n_neighbors: int = N_NEIGHBORS
    min_dist: float = MIN_DIST
    metric: str = METRIC
    max_fit: int = MAX_FIT
    seed: int = 0


def _umap() -> Any:
    try:
        import umap
    except ImportError as error:
        raise LayoutError(
            "activation atlases need umap-learn; install it with `pip install neuron-atlas[actatlas]`"
        ) from error
    return umap


def _place(reducer: Any, vectors: np.ndarray) -> np.ndarray:
    return reducer.transform(vectors).astype(np.float32)


def layout(vectors: np.ndarray, settings: LayoutSettings = LayoutSettings()) -> np.ndarray:
    """(n, 2) float32 coordinates of `vectors` (n, C): UMAP fit on the first `max_fit`, rest transformed."""
    if len(vectors) <= settings.n_neighbors:
        raise LayoutError(
            f"{len(vectors)} vectors are too few for a layout with n_neighbors={settings.n_neighbors}; "
            "scan more images or lower n_neighbors"
        )
    reducer = _umap().UMAP(
        n_components=2,
        n_neighbors=settings.n_neighbors,
        min_dist=settings.min_dist,
        metric=settings.metric,
        random_state=settings.seed,
    )
    fitted = reducer.fit_transform(vectors[: settings.max_fit]).astype(np.float32)
    rest = vectors[settings.max_fit :]
    if len(rest) == 0:
        return fitted
    return np.concatenate([fitted, *place_chunks(reducer, rest)])


def place_chunks(reducer: Any, vectors: np.ndarray, chunk: int = PLACE_CHUNK) -> list[np.ndarray]:
    """`reducer.transform` over chunks of `vectors`, as Ray tasks when Ray is running, in order."""
    chunks = [vectors[i : i + chunk] for i in range(0, len(vectors), chunk)]
    import ray

    if not ray.is_initialized():
        return [_place(reducer, c) for c in chunks]
    # No CPU reservation: the job's idle executor actors hold every CPU until the job ends.
    place = ray.remote(num_cpus=0)(_place)
    shared = ray.put(reducer)
    return ray.get([place.remote(shared, c) for c in chunks])
