"""Dataset examples of transformer units: the whole image with the unit's per-patch heatmap.

Every patch token of a ViT layer sees the whole image, so a receptive-field crop says little.
What says where the unit fires is its activation on each patch: drawn over the image the model
saw, warm where the unit is high (where it is low, for bottom examples). CNN layers keep their
crops (atlas.kinds.examples).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from atlas.data.source import ImageSource, model_view
from atlas.models import LoadedModel
from atlas.models.layout import TOKENS

BATCH = 32
HEAT_COLOR = np.array([255.0, 48.0, 0.0])
STRENGTH = 0.6  # how far the hottest patch is pulled towards HEAT_COLOR


def wanted(model: LoadedModel, layer: str) -> bool:
    """Heatmaps replace crops on token layers (the class-token pseudo-layer has no patches)."""
    try:
        return model.layout(layer).kind == TOKENS
    except KeyError:  # a pseudo-layer (directions) of the scan: keep its crops
        return False


def unit_maps(
    model: LoadedModel, layer: str, source: ImageSource, pairs: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], np.ndarray]:
    """(source id, channel) -> the channel's (H, W) activation over the patch grid of that image."""
    channels_of: dict[str, set[int]] = {}
    for source_id, channel in pairs:
        channels_of.setdefault(source_id, set()).add(channel)
    ids = sorted(channels_of)
    maps: dict[tuple[str, int], np.ndarray] = {}
    for start in range(0, len(ids), BATCH):
        chunk = []
        for source_id, decoded in source.load_many(ids[start : start + BATCH]):
            if decoded.image is not None:
                chunk.append((source_id, model_view(decoded.image, model.input_size)))
        if not chunk:
            continue
        pixels = torch.stack([torch.from_numpy(np.asarray(view).copy()) for _, view in chunk])
        x01 = pixels.permute(0, 3, 1, 2).float().div_(255.0).to(model.device)
        with torch.no_grad():
            acts = model.activations(x01, [layer])[layer]
        for row, (source_id, _) in enumerate(chunk):
            for channel in channels_of[source_id]:
                maps[(source_id, channel)] = acts[row, channel].float().cpu().numpy()
    return maps


def overlay(view: Image.Image, grid: np.ndarray, size: int) -> Image.Image:
    """``view`` at ``size`` with ``grid`` (H, W) drawn over it: its maximum hottest, its minimum clear."""
    low, high = float(grid.min()), float(grid.max())
    heat = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    heat_image = Image.fromarray((heat * 255).round().astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    weight = np.asarray(heat_image, dtype=np.float64)[..., None] / 255.0 * STRENGTH
    pixels = np.asarray(view.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    mixed = pixels * (1.0 - weight) + HEAT_COLOR * weight
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))


def overlays(
    model: LoadedModel,
    layer: str,
    source: ImageSource,
    wanted_maps: Sequence[tuple[str, int, bool]],
    size: int,
) -> dict[tuple[str, int, bool], bytes]:
    """PNG per (source id, channel, low): the model's view of the image with the unit's heatmap,
    hottest where the unit is highest, or lowest when ``low`` (bottom examples)."""
    maps = unit_maps(model, layer, source, [(source_id, channel) for source_id, channel, _ in wanted_maps])
    views = {
        source_id: model_view(decoded.image, model.input_size)
        for source_id, decoded in source.load_many(sorted({s for s, _ in maps}))
        if decoded.image is not None
    }
    pngs = {}
    for source_id, channel, low in set(wanted_maps):
        if (source_id, channel) not in maps:
            continue
        grid = maps[(source_id, channel)]
        buffer = io.BytesIO()
        overlay(views[source_id], -grid if low else grid, size).save(buffer, format="PNG", compress_level=3)
        pngs[(source_id, channel, low)] = buffer.getvalue()
    return pngs
