"""neuron-atlas: neuron atlases (feature visualizations + dataset examples) for vision models.

``atlas.visualize`` and ``atlas.examples`` (alias ``atlas.scan``) are the notebook API
(atlas/api.py); they load on first use, so ``import atlas`` stays cheap (no torch import).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Examples", "Visualization", "examples", "layers", "scan", "visualize"]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    if name in __all__:
        from atlas import api

        return getattr(api, name)
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
