"""Icons of an activation atlas: one feature visualization per kept grid cell.

Each icon is optimized toward its cell's mean activation vector with the Activation Atlas
article's objective, the dot product with the direction times a power of the cosine similarity
(`atlas.optvis.objectives.direction` with `cosine_power`), so an icon must point along its cell's
direction and not merely be large in it. Icons use the job's parameterization, transforms and
batch size (`atlas.optvis.render_vectors`), so they batch exactly like channels do.

`agreement` is the check that icons show their own cell: the fraction of icons whose activation
is more cosine-similar to their own cell's direction than to any other cell's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from atlas.models import LoadedModel
from atlas.optvis import RenderedImage, render_vectors
from atlas.optvis.recipes import RenderSettings

# Power of the cosine similarity in the icon objective. The article weights the dot product by a
# power of the cosine so icons follow their direction, not its magnitude; with 4, an icon that
# starts at a negative cosine never recovers (the clamped cosine has no gradient), with 2 every
# icon of the demo check finds its cell (scripts/actatlas_cost.py).
COSINE_POWER = 2.0


def render_icons(
    model: LoadedModel,
    layer: str,
    means: np.ndarray,
    cells: Sequence[int],
    settings: RenderSettings,
    cosine_power: float = COSINE_POWER,
) -> list[RenderedImage]:
    """One icon per row of `means` (k, C); row i belongs to grid cell `cells[i]` (its variant)."""
    labels = [f"cell {c}" for c in cells]
    vectors = torch.from_numpy(np.asarray(means, np.float32))
    return render_vectors(model, layer, vectors, settings, labels, "icon", cosine_power, variants=cells)


def cosine_matrix(activations: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(k, k) cosine similarity of each icon's activation (rows) with each cell's direction."""
    a = activations / (np.linalg.norm(activations, axis=1, keepdims=True) + 1e-12)
    d = directions / (np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12)
    return a @ d.T


def agreement(activations: np.ndarray, directions: np.ndarray) -> float:
    """Fraction of icons most cosine-similar to their own cell's direction (chance: 1 / k)."""
    similarity = cosine_matrix(activations, directions)
    return float((similarity.argmax(axis=1) == np.arange(len(similarity))).mean())
