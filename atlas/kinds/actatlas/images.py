"""Thumbnails of the dataset images that fell in an atlas cell, cut where the layer looked.

A sample of the atlas is one position of one image (`atlas.kinds.actatlas.collect`), so its thumbnail
is the layer's receptive field around that position, cut from the centered square the model saw,
as the channels' dataset examples are (`atlas.kinds.examples.finalize`); on a ViT's token layers that is
the patch's receptive field (the class token is never sampled). Layers without positions (vectors,
logits) show the whole square.
"""

from __future__ import annotations

from collections.abc import Sequence

from atlas.data.source import ImageSource, png, view_crop
from atlas.models import LoadedModel
from atlas.models.receptive import receptive_field

THUMB_SIZE = 64  # pixels per side: a cell panel shows up to 8 at once


def _box(model: LoadedModel, layer: str, position: int) -> tuple[float, float, float, float] | None:
    """Where `position` looks, in model-input pixels; None: everywhere (1 x 1 layers).

    Positions index the (H, W) map `LoadedModel.activations` gives, patches only for token layers.
    """
    height, width = model.layout(layer).grid
    if height * width == 1:
        return None
    y, x = divmod(position, width)
    return receptive_field(model, layer).box(y, x)


def thumbnails(
    model: LoadedModel,
    layer: str,
    source: ImageSource,
    samples: Sequence[tuple[str, int]],
    size: int = THUMB_SIZE,
) -> dict[tuple[str, int], bytes]:
    """PNG thumbnails of (source id, position) samples; images that no longer load are left out."""
    wanted: dict[str, set[int]] = {}
    for source_id, position in samples:
        wanted.setdefault(source_id, set()).add(position)
    found = {}
    for source_id, decoded in source.load_many(sorted(wanted)):
        if decoded.image is None:
            continue
        for position in wanted[source_id]:
            box = _box(model, layer, position) or (0.0, 0.0, model.input_size, model.input_size)
            found[(source_id, position)] = png(view_crop(decoded.image, box, model.input_size, size))
    return found
