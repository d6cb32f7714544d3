"""Icons of an activation atlas: one feature visualization per kept grid cell.

Each icon is optimized so that its activation, averaged over positions, reaches its cell's mean
activation vector (`atlas.optvis.objectives.mean_match`): the cell mean is the average of the
activations of the images in the cell, so the icon is made to activate the layer as they do on
average. The Activation Atlas article's objective, the dot product with the cell mean times a
power of the cosine (`direction` with `cosine_power`, the cosine floored at 1e-4), has practically
no gradient where the cosine is at or below zero: on a centred (signed) layer an icon whose start
points away from its cell barely moves, and some stayed flat grey (BENCHMARKS.md,
"Activation-atlas icons reach their cells"). The distance to the cell mean has a gradient
wherever the icon is not there yet, whichever way it starts. Icons use the job's
parameterization, transforms and batch size (`atlas.optvis.render_vectors`), so they batch
exactly like channels do.

`agreement` is the check that icons show their own cell: the fraction of icons whose activation
is more cosine-similar to their own cell's direction than to any other cell's; `pairwise_agreement`
the fraction of (icon, other cell) pairs where the icon is closer to its own cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from atlas.models import LoadedModel
from atlas.optvis import RenderedImage, render_vectors
from atlas.optvis.recipes import RenderSettings


def render_icons(
    model: LoadedModel,
    layer: str,
    means: np.ndarray,
    cells: Sequence[int],
    settings: RenderSettings,
) -> list[RenderedImage]:
    """One icon per row of `means` (k, C); row i belongs to grid cell `cells[i]` (its variant)."""
    labels = [f"cell {c}" for c in cells]
    vectors = torch.from_numpy(np.asarray(means, np.float32))
    return render_vectors(model, layer, vectors, settings, labels, "icon", variants=cells, match=True)


def cosine_matrix(activations: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(k, k) cosine similarity of each icon's activation (rows) with each cell's direction."""
    a = activations / (np.linalg.norm(activations, axis=1, keepdims=True) + 1e-12)
    d = directions / (np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12)
    return a @ d.T


def agreement(activations: np.ndarray, directions: np.ndarray) -> float:
    """Fraction of icons most cosine-similar to their own cell's direction (chance: 1 / k)."""
    similarity = cosine_matrix(activations, directions)
    return float((similarity.argmax(axis=1) == np.arange(len(similarity))).mean())


def pairwise_agreement(activations: np.ndarray, directions: np.ndarray) -> float:
    """Fraction of (icon, other cell) pairs in which the icon is more cosine-similar to its own
    cell's direction than to the other cell's (chance: 0.5; needs two cells or more)."""
    similarity = cosine_matrix(activations, directions)
    own = np.diag(similarity)[:, None]
    others = ~np.eye(len(similarity), dtype=bool)
    return float((own > similarity)[others].mean())
