"""Tiny inline SVG geometry for per-channel activation histograms.

An inline path costs a few hundred bytes and no request, so a 1,024-channel page can show a
histogram on every row without loading anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

HISTOGRAM_HEIGHT = 16


@dataclass(frozen=True)
class HistogramShape:
    """Bar outline in a `bins x HISTOGRAM_HEIGHT` box, plus where zero falls and the value range."""

    bins: int
    path: str
    zero_x: float | None
    low: float
    high: float


def histogram_shape(edges: Sequence[float], counts: Sequence[int]) -> HistogramShape | None:
    """Outline of the bars on a square-root scale (ReLU layers pile up at zero and would hide the rest)."""
    if len(counts) == 0 or len(edges) != len(counts) + 1:
        return None
    peak = math.sqrt(max(max(counts), 1))
    steps = [f"M0 {HISTOGRAM_HEIGHT}"]
    for index, count in enumerate(counts):
        top = HISTOGRAM_HEIGHT * (1 - math.sqrt(max(count, 0)) / peak)
        steps.append(f"V{top:.1f}H{index + 1}")
    steps.append(f"V{HISTOGRAM_HEIGHT}Z")
    return HistogramShape(
        bins=len(counts),
        path="".join(steps).replace(".0V", "V").replace(".0H", "H"),
        zero_x=_zero_position(edges),
        low=float(edges[0]),
        high=float(edges[-1]),
    )


def _zero_position(edges: Sequence[float]) -> float | None:
    """Position of 0 in bin units, interpolated between the edges that straddle it."""
    for index in range(len(edges) - 1):
        left, right = float(edges[index]), float(edges[index + 1])
        if left <= 0.0 <= right and right > left:
            return round(index + (0.0 - left) / (right - left), 2)
    return None
