"""How far a unit's pictures can be trusted: held-out robustness, noise, diversity, thresholds."""

from atlas.quality.checkset import CHECK_SET, CheckResult, check_activations
from atlas.quality.measures import HIGH_FREQUENCY_CUTOFF, diversity_similarity, high_frequency_share
from atlas.quality.record import THRESHOLDS, flags, quality_table

__all__ = [
    "CHECK_SET",
    "HIGH_FREQUENCY_CUTOFF",
    "THRESHOLDS",
    "CheckResult",
    "check_activations",
    "diversity_similarity",
    "flags",
    "high_frequency_share",
    "quality_table",
]
