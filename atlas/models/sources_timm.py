"""timm models (``timm:<name>``) with the preprocessing their pretrained config declares.

Weights come from timm's local Hugging Face cache (``weights = "default"`` or a pretrained tag
like ``"augreg_in21k"``), a checkpoint on disk, or nowhere (``weights = "none"``, random init).
Nothing is downloaded at run time on a machine without network; the error says how to fetch.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from atlas.models.hub import local_cache_only, weights_not_cached
from atlas.models.registry import ModelError, Preprocessing, did_you_mean, load_checkpoint, model_source


def _timm():
    try:
        import timm
    except ImportError as err:
        raise ModelError(
            "timm models need the 'vit' extra: pip install 'neuron-atlas[vit]' (or pip install timm)"
        ) from err
    return timm


@model_source("timm:", "timm:<name>")
def build_timm(name: str, weights: str, checkpoint: Path | None) -> tuple[nn.Module, Preprocessing]:
    """``timm.create_model`` offline; a missing cache entry fails with the command that fills it."""
    timm = _timm()
    if not timm.is_model(name):
        raise ModelError(f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())}")
    pretrained = weights != "none" and checkpoint is None
    full_name = name if weights in ("default", "none") else f"{name}.{weights}"
    if pretrained:
        try:
            with local_cache_only():
                module = timm.create_model(full_name, pretrained=True)
        except Exception as err:  # hub misses surface as several exception types
            command = f"python -c \"import timm; timm.create_model('{full_name}', pretrained=True)\""
            raise weights_not_cached(f"timm weights for {full_name!r}", command, err) from err
    else:
        module = timm.create_model(name, pretrained=False)
        if checkpoint is not None:
            load_checkpoint(module, checkpoint, f"timm:{name}")
    config = timm.data.resolve_data_config({}, model=module)
    _, height, width = config["input_size"]
    if height != width:
        raise ModelError(f"timm model {name!r} expects a {height}x{width} input; only square inputs work")
    fixed = bool(module.pretrained_cfg.get("fixed_input_size", False))
    return module, Preprocessing(
        input_size=int(height), mean=tuple(config["mean"]), std=tuple(config["std"]), fixed_size=fixed
    )
