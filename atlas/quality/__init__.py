"""How far a unit's pictures can be trusted: held-out robustness, noise, diversity, thresholds.

The names below are loaded on first use, so that the thresholds (``atlas.quality.thresholds``)
can be read without torch (the site does).
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "CHECK_SET": "checkset",
    "CheckResult": "checkset",
    "check_activations": "checkset",
    "HIGH_FREQUENCY_CUTOFF": "measures",
    "diversity_similarity": "measures",
    "high_frequency_share": "measures",
    "quality_table": "record",
    "THRESHOLDS": "thresholds",
    "flags": "thresholds",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'atlas.quality' has no attribute {name!r}")
    return getattr(import_module(f"atlas.quality.{_HOMES[name]}"), name)
