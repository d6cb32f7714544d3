"""Receptive fields for any model, measured instead of derived from the architecture.

Walking kernel sizes and strides only works for plain conv stacks; branches, attention or odd
padding break it. Measuring works for every differentiable model: the gradient of one position of
a layer with respect to the input is non-negligible exactly where that position looks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atlas.models import LOGITS, LoadedModel

GRADIENT_FLOOR = 0.01  # pixels below this fraction of the strongest gradient are ignored
PROBES = 8  # random inputs averaged, so dead ReLUs of one input do not shrink the field
MIN_CROP_FRACTION = 1 / 8  # crops smaller than this fraction of the input are unreadable

_CACHE: dict[tuple[str, str, str, int], ReceptiveField] = {}


@dataclass(frozen=True)
class ReceptiveField:
    """Where a layer's positions look, in input pixels of the model's square input."""

    input_size: int
    grid_height: int  # the layer's activation map, at input_size
    grid_width: int
    height: int  # extent of the effective receptive field, in input pixels
    width: int

    def box(self, y: int, x: int, min_side: int | None = None) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in input pixels around activation position (y, x).

        The box keeps its size and is shifted inside the image at the borders, so every crop of a
        layer shows the same amount of context.
        """
        floor = min_side if min_side is not None else round(self.input_size * MIN_CROP_FRACTION)
        height = min(self.input_size, max(self.height, floor))
        width = min(self.input_size, max(self.width, floor))
        center_y = (y + 0.5) * self.input_size / self.grid_height
        center_x = (x + 0.5) * self.input_size / self.grid_width
        top = min(max(center_y - height / 2, 0.0), self.input_size - height)
        left = min(max(center_x - width / 2, 0.0), self.input_size - width)
        return left, top, left + width, top + height


def layer_grid(model: LoadedModel, layer: str) -> tuple[int, int]:
    """Height and width of a layer's positions at the model's input size (patches for tokens)."""
    return model.layout(layer).grid


def receptive_field(model: LoadedModel, layer: str) -> ReceptiveField:
    """Effective receptive field of one central position of `layer`, computed once per layer."""
    layer = model.resolve_layer(layer)
    key = (model.name, model.digest, layer, model.input_size)
    if key not in _CACHE:
        _CACHE[key] = _measure(model, layer)
    return _CACHE[key]


def _measure(model: LoadedModel, layer: str) -> ReceptiveField:
    size = model.input_size
    grid_h, grid_w = layer_grid(model, layer)
    if layer == LOGITS:
        return ReceptiveField(size, 1, 1, size, size)
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(PROBES, 3, size, size, generator=generator).to(model.device).requires_grad_(True)
    center_y, center_x = grid_h // 2, grid_w // 2
    with torch.enable_grad():
        output = model.activations(probe, [layer])[layer]
        output[:, :, center_y, center_x].abs().sum().backward()
    saliency = probe.grad.abs().sum(dim=(0, 1))
    strong = saliency >= saliency.max() * GRADIENT_FLOOR
    if not bool(strong.any()):  # a layer that ignores its input: show the whole image
        return ReceptiveField(size, grid_h, grid_w, size, size)
    rows = torch.nonzero(strong.any(dim=1)).flatten()
    cols = torch.nonzero(strong.any(dim=0)).flatten()
    pixel_y = (center_y + 0.5) * size / grid_h
    pixel_x = (center_x + 0.5) * size / grid_w
    # Symmetric about the position: a border-clipped side must not shrink the field.
    half_h = max(pixel_y - float(rows[0]), float(rows[-1]) + 1 - pixel_y)
    half_w = max(pixel_x - float(cols[0]), float(cols[-1]) + 1 - pixel_x)
    height = min(size, round(2 * half_h))
    width = min(size, round(2 * half_w))
    return ReceptiveField(size, grid_h, grid_w, height, width)
