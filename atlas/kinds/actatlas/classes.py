"""Which class a direction in a layer raises most, through the rest of the network.

For a class-filtered atlas each cell's mean vector is set as the layer's output at every position
(a forward hook replaces it) and the rest of the network computes the logits; the cell's class is
the one whose logit rises most over the same intervention with the dataset's mean vector. This
measures each direction's effect on the classes through every layer after it, non-linearities
included, without depending on any one image.
"""

from __future__ import annotations

import numpy as np
import torch

from atlas.models import LoadedModel


def _as_output(vectors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Vectors (B, C) broadcast over the positions of a layer output shaped like `like`."""
    if like.ndim == 4:
        return vectors[:, :, None, None].expand(-1, -1, *like.shape[2:]).contiguous()
    if like.ndim == 3:  # tokens (B, N, C)
        return vectors[:, None, :].expand(-1, like.shape[1], -1).contiguous()
    return vectors


def class_gains(model: LoadedModel, layer: str, directions: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """(k, classes): each logit with the layer set to a direction, minus with it set to `baseline`."""
    name = model.resolve_layer(layer)
    vectors = torch.from_numpy(np.concatenate([baseline[None], directions]).astype(np.float32)).to(
        model.device
    )
    if name in model.folded.affine:  # the module now outputs the folded (BatchNorm-applied) map
        scale, shift = model.folded.affine[name]
        vectors = vectors * scale + shift
    module = dict(model.module.named_modules())[name]
    handle = module.register_forward_hook(lambda _m, _i, out: _as_output(vectors, out).to(out))
    try:
        with torch.no_grad():
            blank = torch.zeros(len(vectors), 3, model.input_size, model.input_size, device=model.device)
            logits = model.module(model.normalize(blank)).float()
    finally:
        handle.remove()
    return (logits[1:] - logits[:1]).cpu().numpy()
