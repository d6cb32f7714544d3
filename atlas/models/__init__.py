"""Model registry, preprocessing, layer discovery and truncated forward passes."""

from atlas.models.loaded import (
    LOGITS,
    LayerInfo,
    LoadedModel,
    UnknownLayerError,
    freeze,
    load_model,
    pick_device,
)
from atlas.models.registry import ModelError, Preprocessing

# Sources in their own modules register themselves on import (their heavy imports are lazy).
from atlas.models import sources_open_clip, sources_timm  # noqa: E402, F401  (isort: skip)

__all__ = [
    "LOGITS",
    "LayerInfo",
    "LoadedModel",
    "ModelError",
    "Preprocessing",
    "UnknownLayerError",
    "freeze",
    "load_model",
    "pick_device",
]
