"""Finalizing a layer: the merged scan becomes the `examples` and `histogram` tables, with crops.

`finalize_layer` estimates each "slightly" bucket's quantile from the partial's sample and picks
the sampled images nearest to it; it trims the fixed fine histogram's empty bins and merges
neighbours down to `bins` (exact), with the true extremes as outer edges. Crops are the layer's
receptive field around the recorded position (token layers: the whole image with a heatmap).

A feature dashboard (`dashboard`, SAE layers) adds the `quantile` bucket, sae_vis's quantile
groups: the activation range (0, max] cut into GROUPS intervals of equal width, and in each up to
PER_GROUP images drawn from the partial's uniform sample of images (those of smallest hash, so a
uniform draw among the group's images), topped up from the top-k where the sample holds too few
(the upper groups of a rare feature). And it records the share of images where each unit fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from atlas.core.schema import EXAMPLES_SCHEMA, HISTOGRAM_SCHEMA, keyed_table
from atlas.core.schema import QUANTILE_GROUPS as GROUPS
from atlas.core.schema import QUANTILE_PER_GROUP as PER_GROUP
from atlas.data.source import ImageSource, png, view_crop
from atlas.kinds.examples import heatmaps
from atlas.kinds.examples.partial import (
    FIRES,
    HIST_EDGES,
    ZERO_BIN,
    LayerScan,
    PartialScan,
    ScanError,
    base_layer,
)
from atlas.models import LoadedModel
from atlas.models.receptive import ReceptiveField, receptive_field


@dataclass(frozen=True)
class _Pick:
    """One example row before its image is cut."""

    channel: int
    bucket: str
    rank: int
    activation: float
    source_id: str
    y: int
    x: int


def finalize_layer(
    model: LoadedModel,
    layer: str,
    partial: PartialScan,
    source: ImageSource,
    crop_size: int,
    thumb_size: int,
    unit_key: str,
    channels: Sequence[int] | None = None,
    quantiles: tuple[float, float] = (0.25, 0.75),
    bins: int = 32,
    dashboard: bool = False,
) -> tuple[pa.Table, pa.Table]:
    """The `examples` and `histogram` tables of one (pseudo-)layer from the merged scan.

    Buckets: `max` / `min` are the k images with the highest spatial maximum / lowest spatial
    minimum. `slightly_negative` are the sampled images whose spatial minimum is nearest the
    `quantiles[0]` quantile of all images' minima, `slightly_positive` those whose maximum is
    nearest the `quantiles[1]` quantile of the maxima. Rank 0 is the most extreme in every bucket
    (highest for max / slightly_positive, lowest for min / slightly_negative).
    With `dashboard`, the `quantile` bucket (`quantile_groups`; rank r is in group
    GROUPS - 1 - r // PER_GROUP, so rank 0 is the highest) and the `images_active` column.
    Crops are the layer's receptive field around the position, cut from the centered square the
    model saw; on token layers (ViTs) they are that whole square with the unit's per-patch
    heatmap (atlas.kinds.examples.heatmaps). Thumbs show the whole image, longest side `thumb_size`.
    """
    if layer not in partial.layers:
        raise ScanError(f"the scan has no layer {layer!r}; scanned: {', '.join(partial.layers)}")
    if not all(0.0 <= q <= 1.0 for q in quantiles):
        raise ScanError(f"quantiles must lie in [0, 1], got {quantiles}")
    scan = partial.layers[layer]
    wanted = list(range(scan.channels)) if channels is None else list(channels)
    bad = [c for c in wanted if not 0 <= c < scan.channels]
    if bad:
        raise ScanError(f"layer {layer!r} has {scan.channels} channels; no channel {bad[0]}")
    picks = [p for c in wanted for p in _picks(scan, partial.sample_ids, c, partial.k, quantiles)]
    if dashboard:
        picks += [p for c in wanted for p in quantile_groups(scan, partial.sample_ids, c)]
    field_ = receptive_field(model, base_layer(layer))
    images = _cut(source, picks, field_, crop_size, thumb_size)
    kept = [p for p in picks if p.source_id in images]
    crops = [images[p.source_id][0][(p.y, p.x)] for p in kept]
    if heatmaps.wanted(model, layer):  # token layers: whole image + per-patch heatmap
        keys = [(p.source_id, p.channel, p.bucket in ("min", "slightly_negative")) for p in kept]
        drawn = heatmaps.overlays(model, layer, source, keys, crop_size)
        crops = [drawn.get(key, crop) for key, crop in zip(keys, crops, strict=True)]
    examples = keyed_table(
        {
            "layer": pa.array([layer] * len(kept), pa.string()),
            "channel": pa.array([p.channel for p in kept], pa.int32()),
            "bucket": pa.array([p.bucket for p in kept], pa.string()),
            "rank": pa.array([p.rank for p in kept], pa.int32()),
            "activation": pa.array([p.activation for p in kept], pa.float32()),
            "source_id": pa.array([p.source_id for p in kept], pa.string()),
            "x": pa.array([p.x for p in kept], pa.int32()),
            "y": pa.array([p.y for p in kept], pa.int32()),
            "crop": pa.array(crops, pa.binary()),
            "thumb": pa.array([images[p.source_id][1] for p in kept], pa.binary()),
        },
        EXAMPLES_SCHEMA,
        unit_key,
    )
    histograms = [_coarse_histogram(scan, c, bins) for c in wanted]
    histogram = keyed_table(
        {
            "layer": pa.array([layer] * len(wanted), pa.string()),
            "channel": pa.array(wanted, pa.int32()),
            "edges": pa.array([h[0] for h in histograms], pa.list_(pa.float32())),
            "counts": pa.array([h[1] for h in histograms], pa.list_(pa.int64())),
            "active": pa.array([active_share(scan, c) for c in wanted], pa.float32()),
            "images_active": pa.array(
                [images_share(scan, c) if dashboard else None for c in wanted], pa.float32()
            ),
        },
        HISTOGRAM_SCHEMA,
        unit_key,
    )
    return examples, histogram


def _picks(
    scan: LayerScan, sample_ids: np.ndarray, channel: int, k: int, quantiles: tuple[float, float]
) -> list[_Pick]:
    picks = []
    for bucket, top, sign in (("max", scan.top, 1.0), ("min", scan.bottom, -1.0)):
        for rank in range(k):
            if top.ids[channel, rank]:
                picks.append(
                    _Pick(
                        channel,
                        bucket,
                        rank,
                        sign * float(top.values[channel, rank]),
                        str(top.ids[channel, rank]),
                        int(top.ys[channel, rank]),
                        int(top.xs[channel, rank]),
                    )
                )
    sides = (
        ("slightly_negative", scan.sample_min, scan.sample_min_y, scan.sample_min_x, quantiles[0], 1.0),
        ("slightly_positive", scan.sample_max, scan.sample_max_y, scan.sample_max_x, quantiles[1], -1.0),
    )
    for bucket, values, ys, xs, q, order_sign in sides:
        column = values[:, channel]
        if len(column) == 0:
            continue
        target = float(np.quantile(column, q))
        nearest = np.lexsort((sample_ids, np.abs(column - target)))[:k]
        nearest = nearest[np.lexsort((sample_ids[nearest], order_sign * column[nearest]))]
        picks.extend(
            _Pick(
                channel,
                bucket,
                rank,
                float(column[i]),
                str(sample_ids[i]),
                int(ys[i, channel]),
                int(xs[i, channel]),
            )
            for rank, i in enumerate(nearest)
        )
    return picks


def quantile_groups(scan: LayerScan, sample_ids: np.ndarray, channel: int) -> list[_Pick]:
    """The `quantile` bucket of one channel: up to PER_GROUP images in each of GROUPS intervals
    of equal width across (0, the channel's maximum]; see the module docstring."""
    top = float(scan.top.values[channel, 0])
    if not top >= FIRES:  # never fires (or nothing was scanned): no range to cut
        return []
    sampled = scan.sample_max[:, channel]
    candidates = [  # the sample first, in its order (smallest hash first), then the top-k
        (
            float(value),
            str(sample_ids[row]),
            int(scan.sample_max_y[row, channel]),
            int(scan.sample_max_x[row, channel]),
        )
        for row, value in enumerate(sampled)
        if value >= FIRES
    ]
    candidates += [
        (float(value), str(source), int(y), int(x))
        for value, source, y, x in zip(
            scan.top.values[channel],
            scan.top.ids[channel],
            scan.top.ys[channel],
            scan.top.xs[channel],
            strict=True,
        )
        if source and value >= FIRES
    ]
    groups: list[dict[str, tuple[float, str, int, int]]] = [{} for _ in range(GROUPS)]
    for value, source, y, x in candidates:
        group = groups[min(GROUPS - 1, max(0, int(np.ceil(value / top * GROUPS)) - 1))]
        if len(group) < PER_GROUP and source not in group:
            group[source] = (value, source, y, x)
    picks = []
    for index, group in enumerate(groups):
        first = (GROUPS - 1 - index) * PER_GROUP
        ranked = sorted(group.values(), key=lambda pick: (-pick[0], pick[1]))
        picks += [
            _Pick(channel, "quantile", first + offset, value, source, y, x)
            for offset, (value, source, y, x) in enumerate(ranked)
        ]
    return picks


def _cut(
    source: ImageSource, picks: Sequence[_Pick], field_: ReceptiveField, crop_size: int, thumb_size: int
) -> dict[str, tuple[dict[tuple[int, int], bytes], bytes]]:
    """Per source id: PNG crops by position and the PNG thumbnail; each image is decoded once.

    Ids that no longer load (the source changed since the scan) are left out.
    """
    positions: dict[str, set[tuple[int, int]]] = {}
    for pick in picks:
        positions.setdefault(pick.source_id, set()).add((pick.y, pick.x))
    cut = {}
    for source_id, decoded in source.load_many(sorted(positions)):
        if decoded.image is None:
            continue
        image = decoded.image
        crops = {
            (y, x): png(view_crop(image, field_.box(y, x), field_.input_size, crop_size))
            for y, x in positions[source_id]
        }
        thumb = image.copy()
        thumb.thumbnail((thumb_size, thumb_size), Image.Resampling.BICUBIC)
        cut[source_id] = (crops, png(thumb))
    return cut


def active_share(scan: LayerScan, channel: int) -> float:
    """Share of every position of every image where the channel is at least 2^-10: the fine
    histogram's bins above [0, 2^-10), which holds the exact zeros of a ReLU (or SAE) unit."""
    counts = scan.histogram[channel]
    total = int(counts.sum())
    return float(counts[ZERO_BIN + 1 :].sum()) / total if total else 0.0


def images_share(scan: LayerScan, channel: int) -> float | None:
    """Share of the scanned images where the channel fires somewhere (its spatial maximum is at
    least FIRES); None for scans stored before it was counted."""
    if scan.fired is None or not scan.images:
        return None
    return float(scan.fired[channel]) / scan.images


def _coarse_histogram(scan: LayerScan, channel: int, bins: int) -> tuple[list[float], list[int]]:
    """Trim empty fine bins, merge neighbours down to at most `bins`, outer edges = true extremes."""
    counts = scan.histogram[channel]
    occupied = np.nonzero(counts)[0]
    if len(occupied) == 0:
        return [], []
    first, last = int(occupied[0]), int(occupied[-1])
    group = -(-(last - first + 1) // max(1, bins))
    starts = list(range(first, last + 1, group))
    coarse = [int(counts[s : min(s + group, last + 1)].sum()) for s in starts]
    edges = [float(HIST_EDGES[s]) for s in starts] + [float(HIST_EDGES[last + 1])]
    edges[0] = -float(scan.bottom.values[channel, 0])
    edges[-1] = float(scan.top.values[channel, 0])
    return edges, coarse
