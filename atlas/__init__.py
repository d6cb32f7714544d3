"""neuron-atlas: neuron atlases (feature visualizations + dataset examples) for vision models.

``atlas.visualize`` and ``atlas.examples`` (alias ``atlas.scan``) are the notebook API
(atlas/api.py); they load on first use, so ``import atlas`` stays cheap (no torch import).
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"
__all__ = ["Examples", "Visualization", "examples", "scan", "visualize"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from atlas import api

        return getattr(api, name)
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``atlas.examples`` the notebook function although a submodule has the same name.

    Loading the submodule makes the import system set the package's attribute to it; this
    property ignores that, so the attribute stays the function whatever was imported first.
    ``from atlas.examples import ...`` is unaffected: it reads the submodule from sys.modules.
    """

    @property
    def examples(self) -> Any:
        from atlas.api import examples

        return examples

    @examples.setter
    def examples(self, _submodule: types.ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package
