"""Matching units between two checkpoints by how they respond to the same probe images.

Channel i of one checkpoint and channel j of the next are the same feature when their
activations over the fixed probe set are correlated; a one-to-one (Hungarian) assignment that
maximizes the total correlation follows a feature whose role moved to another index. A unit is
dead when its activation does not vary over the probe set (with batch norm a dead unit can still
output a positive constant, so "zero output" is the wrong test).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# A unit whose standard deviation over the probe set is below this (relative to its mean) is dead.
DEAD_TOLERANCE = 1e-6
# Matched units correlated less than this changed role between the two checkpoints.
ROLE_THRESHOLD = 0.5

STATUSES = ("kept", "moved", "changed", "died", "born", "dead")


def dead_units(std: np.ndarray, mean: np.ndarray, tolerance: float = DEAD_TOLERANCE) -> np.ndarray:
    """Boolean mask of units whose activation is constant over the probe set."""
    return np.asarray(std) <= tolerance * (1.0 + np.abs(np.asarray(mean)))


def correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of `a` with every column of `b` (constant columns: 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"matching needs the same probe positions, got {a.shape[0]} and {b.shape[0]}")

    def standardize(m: np.ndarray) -> np.ndarray:
        m = m - m.mean(axis=0, keepdims=True)
        norm = np.linalg.norm(m, axis=0, keepdims=True)
        return np.divide(m, norm, out=np.zeros_like(m), where=norm > 0)

    return np.clip(standardize(a).T @ standardize(b), -1.0, 1.0)


@dataclass(frozen=True)
class Matching:
    """For each unit of the earlier checkpoint: its match in the later one and what happened to it."""

    matched: np.ndarray  # int: the later checkpoint's channel, -1 when the unit has none
    correlation: np.ndarray  # float: correlation with the match (0 without one)
    # per index: kept | moved (its feature went to another index) | changed (low match correlation)
    # | died (alive, then constant) | born (constant, then alive) | dead (constant in both)
    status: tuple[str, ...]


def match_units(
    a: np.ndarray,
    b: np.ndarray,
    dead_a: np.ndarray,
    dead_b: np.ndarray,
    role_threshold: float = ROLE_THRESHOLD,
) -> Matching:
    """One-to-one assignment of the units of `a` (positions x units) to those of `b`.

    Dead units take no part in the assignment (a constant has no correlation); died and born are
    judged per index, role changes per matched feature.
    """
    dead_a, dead_b = np.asarray(dead_a, bool), np.asarray(dead_b, bool)
    corr = correlation_matrix(a, b)
    live_a, live_b = np.flatnonzero(~dead_a), np.flatnonzero(~dead_b)
    matched = np.full(a.shape[1], -1, dtype=np.int64)
    correlation = np.zeros(a.shape[1], dtype=np.float64)
    if live_a.size and live_b.size:
        rows, cols = linear_sum_assignment(corr[np.ix_(live_a, live_b)], maximize=True)
        matched[live_a[rows]] = live_b[cols]
        correlation[live_a[rows]] = corr[live_a[rows], live_b[cols]]
    status = []
    for unit in range(a.shape[1]):
        after_dead = bool(dead_b[unit]) if unit < dead_b.size else True
        if dead_a[unit]:
            status.append("dead" if after_dead else "born")
        elif after_dead:
            status.append("died")
        elif matched[unit] < 0 or correlation[unit] < role_threshold:
            status.append("changed")
        else:
            status.append("kept" if matched[unit] == unit else "moved")
    return Matching(matched=matched, correlation=correlation, status=tuple(status))
