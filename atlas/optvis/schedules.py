"""What changes over the steps of a render: the learning rate and the parameterization's resolution.

A learning-rate schedule maps (step, steps) to a multiplier of ``lr`` (step is 1-based). ``constant`` is
plain Adam; ``warmup-cosine`` ramps up over the first steps (Adam's first moves are the
largest, and the early image is mostly noise) and then decays along a half cosine, so the last
steps refine the picture instead of hopping around the optimum. ``warmup-hold-cosine`` (the
default) keeps both ends but holds the peak in between and spends the same total step size as
``constant``, so short budgets are not starved (BENCHMARKS.md, "Render recipe at every budget").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from atlas.core.errors import AtlasError
from atlas.core.registry import Registry

Schedule = Callable[[int, int], float]

WARMUP_FRACTION = 0.1  # share of the steps spent ramping up
FLOOR = 0.05  # the cosine ends at this fraction of the base rate, not at 0 (the last step still moves)


class ScheduleError(AtlasError, ValueError):
    """An unknown learning-rate schedule."""


def constant(step: int, steps: int) -> float:
    return 1.0


def warmup_cosine(step: int, steps: int) -> float:
    """Linear ramp to 1 over ``WARMUP_FRACTION`` of the steps, then a half cosine down to ``FLOOR``."""
    warmup = max(1, round(steps * WARMUP_FRACTION))
    if step <= warmup:
        return step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return FLOOR + (1.0 - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


# warmup-hold-cosine: the warm-up is a share of the steps capped in steps (Adam needs a few
# steps, not a tenth of a long run); the decay is the last 40%, down to 5% (with the last quarter
# down to 20% and 10% coarse steps, EfficientNet-Lite0's pictures held an HF share of 0.206 at 128
# steps; with these and 20% coarse, 0.157: BENCHMARKS.md).
HOLD_WARMUP_FRACTION = 0.05
HOLD_WARMUP_MAX = 8  # steps
HOLD_DECAY_FRACTION = 0.4
HOLD_FLOOR = 0.05


def _hold_shape(step: int, steps: int) -> float:
    """warmup-hold-cosine before its normalization: ramp, hold at 1, half cosine to HOLD_FLOOR."""
    warmup = max(1, min(round(steps * HOLD_WARMUP_FRACTION), HOLD_WARMUP_MAX))
    decay = max(1, round(steps * HOLD_DECAY_FRACTION))
    if step <= warmup:
        return step / warmup
    if step <= steps - decay:
        return 1.0
    progress = (step - (steps - decay)) / decay
    return HOLD_FLOOR + (1.0 - HOLD_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * progress))


@functools.lru_cache(maxsize=64)
def _hold_mean(steps: int) -> float:
    return math.fsum(_hold_shape(step, steps) for step in range(1, steps + 1)) / steps


def warmup_hold_cosine(step: int, steps: int) -> float:
    """A short warm-up, a hold at the peak, a half cosine over the last 40% of the steps down to
    ``HOLD_FLOOR`` of the peak, scaled so that the mean factor over the run is 1.

    The scale makes ``lr`` the mean step size, as with ``constant``: far from convergence (short
    budgets, small models) the activation grows with the total step size, and a schedule that
    spends half of it (``warmup-cosine`` spends 0.52) loses half the progress. The peak is 1.24
    to 1.28 times ``lr`` at any budget; the decay keeps its share of the steps, the warm-up is at
    most ``HOLD_WARMUP_MAX`` steps.
    """
    return _hold_shape(step, steps) / _hold_mean(steps)


# Registration order is the order users see: the default first.
SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule", ScheduleError)
SCHEDULES.register("warmup-hold-cosine", warmup_hold_cosine)
SCHEDULES.register("warmup-cosine", warmup_cosine)
SCHEDULES.register("constant", constant)


# Multi-resolution: the coarse share of the steps is split evenly over these downsampling factors,
# those that leave at least MIN_COARSE_SIZE pixels (a 16 px stage of a 64 px render holds too
# little to start from: tiny-cnn conv2:3 at 96 steps and 64 px reached 0.647 with it, 0.689
# without, at 25% coarse steps).
COARSE_FACTORS = (4, 2)
MIN_COARSE_SIZE = 32


def coarse_factors(size: int | None) -> Sequence[int]:
    """The downsampling factors of the coarse stages of a ``size`` px render (all: size unknown)."""
    if size is None:
        return COARSE_FACTORS
    return tuple(factor for factor in COARSE_FACTORS if size // factor >= MIN_COARSE_SIZE)


def resolution_factor(step: int, steps: int, coarse_fraction: float, size: int | None = None) -> int:
    """The parameterization's downsampling factor at ``step`` (1: full resolution).

    The first ``coarse_fraction`` of the steps run at a quarter, then half the resolution
    (`COARSE_FACTORS`, without the stages coarser than ``MIN_COARSE_SIZE`` px of a ``size`` px
    render: a 64 px render spends its coarse share at 32 px, a 32 px one has none), the rest at
    full resolution.
    """
    factors = coarse_factors(size)
    coarse = coarse_fraction * steps
    for stage, factor in enumerate(factors):
        if step <= coarse * (stage + 1) / len(factors):
            return factor
    return 1
