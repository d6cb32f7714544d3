"""The quality record of a render unit: one row per picture, written beside its `render` table.

Computed in the worker right after rendering, while the model is loaded: the check set costs
five forward passes per picture against the hundreds of forward and backward passes of the
optimization. The record is a separate `quality` table keyed by the render unit's content key,
so the `render` table and every content key stay as they are (docs/STORE.md).

What needs the dataset is left to the reader: `peak_activation` is the picture's activation at
its strongest position, the same measure as the `examples` table's activation (a spatial
maximum), so the site divides it by the channel's best example to get the activation relative to
the best dataset example. The dataset scan runs after, and independently of, rendering; keeping
it out of the render unit keeps render keys free of dataset fingerprints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from atlas.core.schema import QUALITY_SCHEMA
from atlas.models import LoadedModel
from atlas.optvis import objectives as obj
from atlas.optvis.recipes import RenderedImage
from atlas.quality.checkset import check_activations, quantized
from atlas.quality.measures import diversity_similarity, high_frequency_share

CHECK_BATCH = 32  # pictures scored at once: bounds the memory of the resize to 224


def _objective(layer: str, rows: Sequence[RenderedImage]) -> obj.Objective:
    """Each picture's own objective, as one vectorized score over the batch."""
    kinds: dict[str, tuple[list[int], list[int]]] = {}
    for element, row in enumerate(rows):
        kind = "channel" if row.objective == "diversity" else row.objective
        elements, channels = kinds.setdefault(kind, ([], []))
        elements.append(element)
        channels.append(row.channel)
    terms = []
    for kind, (elements, channels) in kinds.items():
        if kind == "neuron":
            terms.append(obj.neuron(layer, channels, batch=elements))
        else:
            term = obj.channel(layer, channels, batch=elements)
            terms.append(-term if kind == "negative" else term)
    return sum(terms[1:], terms[0])


def _as_tensor(rows: Sequence[RenderedImage]) -> torch.Tensor:
    return torch.from_numpy(np.stack([row.image for row in rows])).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def _measure(model: LoadedModel, layer: str, rows: Sequence[RenderedImage]) -> dict[str, list]:
    images = _as_tensor(rows)
    checked = check_activations(model, images, _objective(layer, rows))
    maps = model.activations(quantized(images).to(model.device), [layer])[layer].float().cpu()
    picked = maps[torch.arange(len(rows)), [row.channel for row in rows]].flatten(1)
    peaks = [
        float(-picked[i].min()) if row.objective == "negative" else float(picked[i].max())
        for i, row in enumerate(rows)
    ]
    return {
        "peak_activation": peaks,
        "robust_activation": checked.robust().tolist(),
        "robust_worst": checked.worst().tolist(),
        "high_frequency": high_frequency_share(images).tolist(),
        "maps": maps,
    }


def quality_table(model: LoadedModel, rendered: Sequence[RenderedImage], unit_key: str) -> pa.Table:
    """The `quality` table of a render unit's pictures (channel, neuron, negative, diversity).

    NaN measures (a diversity similarity on a non-diversity picture, a share of a non-positive
    activation) are stored as nulls.
    """
    columns: dict[str, list] = {name: [] for name in QUALITY_SCHEMA.names}
    for rows in _chunks(rendered):
        measured = _measure(model, rows[0].layer, rows)
        for name in ("peak_activation", "robust_activation", "robust_worst", "high_frequency"):
            columns[name] += measured[name]
        columns["diversity_similarity"] += _set_similarity(rows, measured["maps"])
        columns["layer"] += [row.layer for row in rows]
        columns["channel"] += [int(row.channel) for row in rows]
        columns["objective"] += [row.objective for row in rows]
        columns["variant"] += [int(row.variant) for row in rows]
    columns["unit_key"] = [unit_key] * len(rendered)
    arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in QUALITY_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=QUALITY_SCHEMA)


def _chunks(rendered: Sequence[RenderedImage]) -> list[list[RenderedImage]]:
    """Runs of about CHECK_BATCH pictures that never split one channel (its diversity set)."""
    chunks: list[list[RenderedImage]] = []
    for row in rendered:
        starts_new = not chunks or (len(chunks[-1]) >= CHECK_BATCH and chunks[-1][-1].channel != row.channel)
        if starts_new:
            chunks.append([])
        chunks[-1].append(row)
    return chunks


def _set_similarity(rows: Sequence[RenderedImage], maps: torch.Tensor) -> list[float]:
    """Each diversity picture gets its whole set's similarity; other pictures NaN."""
    members: dict[int, list[int]] = {}
    for element, row in enumerate(rows):
        if row.objective == "diversity":
            members.setdefault(row.channel, []).append(element)
    similarity = {channel: diversity_similarity(maps[elements]) for channel, elements in members.items()}
    return [similarity[row.channel] if row.objective == "diversity" else float("nan") for row in rows]
