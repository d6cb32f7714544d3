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
