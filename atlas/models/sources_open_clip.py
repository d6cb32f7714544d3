"""The image tower of an open_clip model (``open_clip:<arch>``), with CLIP's own mean and std.

``weights`` is an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``; read from the
local cache only) or ``"none"``; a checkpoint is the whole CLIP model's state dict. The tower's
output, the image embedding, plays the part of the logits.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from atlas.models.hub import local_cache_only, weights_not_cached
from atlas.models.registry import ModelError, Preprocessing, did_you_mean, load_checkpoint, model_source


@model_source("open_clip:", "open_clip:<arch>")
def build_open_clip(arch: str, weights: str, checkpoint: Path | None) -> tuple[nn.Module, Preprocessing]:
    try:
        import open_clip
    except ImportError as err:
        raise ModelError(
            "open_clip models need the 'vit' extra: pip install 'neuron-atlas[vit]' "
            "(or pip install open_clip_torch)"
        ) from err
    if arch not in open_clip.list_models():
        raise ModelError(f"unknown open_clip model {arch!r}{did_you_mean(arch, open_clip.list_models())}")
    if weights in ("none", "default") or checkpoint is not None:
        if weights == "default" and checkpoint is None:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none published"
            raise ModelError(
                f"open_clip:{arch} needs weights = one of its pretrained tags ({tags}), "
                f'a checkpoint, or "none" for random weights'
            )
        model = open_clip.create_model(arch, pretrained=None)
        if checkpoint is not None:
            load_checkpoint(model, checkpoint, f"open_clip:{arch}")
    else:
        try:
            with local_cache_only():
                model = open_clip.create_model(arch, pretrained=weights)
        except Exception as err:  # download failures come as several exception types
            command = (
                f"python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{weights}')\""
            )
            raise weights_not_cached(f"open_clip weights {weights!r} for {arch!r}", command, err) from err
    tower = model.visual
    config = getattr(tower, "preprocess_cfg", {}) or {}
    size = tower.image_size
    side = size[0] if isinstance(size, tuple | list) else int(size)
    return tower, Preprocessing(
        input_size=int(side),
        mean=tuple(config.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(config.get("std", open_clip.OPENAI_DATASET_STD)),
        fixed_size=True,
    )
