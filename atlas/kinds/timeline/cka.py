"""Linear centered kernel alignment (Kornblith et al., 2019) between two layers' activations.

CKA compares whole representations, not single units: it is 1 for identical ones and unchanged
by orthogonal transforms and isotropic scaling, so a layer whose channels were merely permuted
or rotated between checkpoints still reads as the same representation.
"""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA of two (examples x features) matrices over the same examples; 0 when either is constant."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples on both sides, got {x.shape[0]} and {y.shape[0]}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    # With few examples and many features the n x n Gram form is cheaper; both give the same value.
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        gx, gy = x @ x.T, y @ y.T
        cross, norm_x, norm_y = float((gx * gy).sum()), float((gx * gx).sum()), float((gy * gy).sum())
    else:
        cross = float(np.square(y.T @ x).sum())
        norm_x, norm_y = float(np.square(x.T @ x).sum()), float(np.square(y.T @ y).sum())
    if norm_x <= 0.0 or norm_y <= 0.0:
        return 0.0
    return cross / np.sqrt(norm_x * norm_y)
