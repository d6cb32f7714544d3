"""What changes over the steps of a render: the learning rate and the parameterization's resolution.

A learning-rate schedule maps (step, steps) to a multiplier of ``lr`` (step is 1-based). ``constant`` is
plain Adam; ``warmup-cosine`` ramps up over the first steps (Adam's first moves are the
largest, and the early image is mostly noise) and then decays along a half cosine, so the last
steps refine the picture instead of hopping around the optimum.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


# Registration order is the order users see: the default first.
SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule", ScheduleError)
SCHEDULES.register("warmup-cosine", warmup_cosine)
SCHEDULES.register("constant", constant)


# Multi-resolution: the coarse share of the steps is split evenly over these downsampling factors.
COARSE_FACTORS = (4, 2)


def resolution_factor(step: int, steps: int, coarse_fraction: float) -> int:
    """The parameterization's downsampling factor at ``step`` (1: full resolution).

    The first ``coarse_fraction`` of the steps run at a quarter, then half the resolution
    (`COARSE_FACTORS`), the rest at full resolution.
    """
    coarse = coarse_fraction * steps
    for stage, factor in enumerate(COARSE_FACTORS):
        if step <= coarse * (stage + 1) / len(COARSE_FACTORS):
            return factor
    return 1
