"""One layer's channels: read its shards, write its image files, keep only a light view model.

The builder calls `read_layer` once per layer and drops the result after rendering the page,
so memory is bounded by the largest layer. Only known objective and bucket words become part of
file names; anything else in the store is ignored rather than trusted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa

from atlas.site.images import LayerImages, Picture, SheetPicture
from atlas.site.svg import HistogramShape, histogram_shape
from atlas.store import Store

OPTIMIZED_OBJECTIVES = ("channel", "neuron", "negative")
INTERACTION_OBJECTIVES = ("direction", "pair", "interpolation")
BUCKETS = ("max", "min", "slightly_positive", "slightly_negative")

RENDER_COLUMNS = ["channel", "channel_b", "objective", "variant", "label", "image", "activation", "loss"]
EXAMPLE_COLUMNS = ["channel", "bucket", "rank", "activation", "source_id", "x", "y", "crop"]
LOSS_POINTS = 48  # a loss curve is drawn from this many samples: enough for its shape
HISTOGRAM_COLUMNS = ["channel", "edges", "counts"]


@dataclass
class ChannelEntry:
    """What a layer page shows for one channel; paths and numbers only, no pixels."""

    channel: int
    optimized: dict[str, Picture] = field(default_factory=dict)
    reached: dict[str, float] = field(default_factory=dict)  # objective -> activation of its image
    diversity: SheetPicture | None = None
    examples: dict[str, SheetPicture] = field(default_factory=dict)
    histogram: HistogramShape | None = None
    # Loaded by the channel view only (details.js): loss curves per objective and, per bucket,
    # where each example comes from as [source_id, x, y].
    losses: dict[str, list[float]] = field(default_factory=dict)
    sources: dict[str, list[list]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.optimized or self.diversity or self.examples or self.histogram)


EntryFor = Callable[[int], ChannelEntry]


@dataclass
class LayerContent:
    """A layer's channel entries plus the rows the interactions page needs (or None)."""

    channels: list[ChannelEntry]
    interaction_renders: pa.Table | None
    direction_examples: pa.Table | None


def read_layer(store: Store, layer: str, images: LayerImages, expected: Iterable[int]) -> LayerContent:
    """Read render, examples and histogram shards of one layer and write their images."""
    entries: dict[int, ChannelEntry] = {c: ChannelEntry(c) for c in expected}

    def entry(channel: int) -> ChannelEntry:
        return entries.setdefault(channel, ChannelEntry(channel))

    interaction_renders = _read_renders(store, layer, images, entry)
    direction_examples = _read_examples(store, layer, images, entry)
    histograms = store.read("histogram", layer, HISTOGRAM_COLUMNS)
    if histograms is not None:
        for row in histograms.to_pylist():
            if row["channel"] >= 0:
                entry(row["channel"]).histogram = histogram_shape(row["edges"], row["counts"])
    return LayerContent(
        channels=[entries[c] for c in sorted(entries)],
        interaction_renders=interaction_renders,
        direction_examples=direction_examples,
    )


def _read_renders(store: Store, layer: str, images: LayerImages, entry: EntryFor) -> pa.Table | None:
    """Write optimized images and diversity sheets; hand back the interaction rows untouched."""
    table = store.read("render", layer, RENDER_COLUMNS)
    if table is None:
        return None
    table = table.combine_chunks()
    objectives = table.column("objective").to_pylist()
    channels = table.column("channel").to_pylist()
    variants = table.column("variant").to_pylist()
    reached = table.column("activation").to_pylist()
    losses = table.column("loss")
    pngs = table.column("image")
    diversity: dict[int, dict[int, int]] = defaultdict(dict)  # channel -> variant -> row
    for row, (objective, channel) in enumerate(zip(objectives, channels, strict=True)):
        if channel < 0:
            continue
        if objective == "diversity":
            diversity[channel][variants[row]] = row
        elif objective in OPTIMIZED_OBJECTIVES:
            target = entry(channel)
            target.optimized[objective] = images.write(f"{channel}-{objective}", pngs[row].as_py())
            target.reached[objective] = _number(reached[row])
            target.losses[objective] = downsample(losses[row].as_py() or [], LOSS_POINTS)
    for channel, rows_by_variant in diversity.items():
        rows = [rows_by_variant[v] for v in sorted(rows_by_variant)]
        entry(channel).diversity = images.write_sheet(
            f"{channel}-diversity",
            [pngs[r].as_py() for r in rows],
            [_number(reached[r]) for r in rows],
            columns=len(rows),
        )
    interaction_mask = pa.array([o in INTERACTION_OBJECTIVES for o in objectives])
    interactions = table.filter(interaction_mask)
    return interactions if interactions.num_rows else None


def _read_examples(store: Store, layer: str, images: LayerImages, entry: EntryFor) -> pa.Table | None:
    """Write one sheet per (channel, bucket), best rank first; hand back the directions' rows."""
    table = store.read("examples", layer, EXAMPLE_COLUMNS)
    if table is None:
        return None
    table = table.combine_chunks()
    channels = table.column("channel").to_pylist()
    buckets = table.column("bucket").to_pylist()
    ranks = table.column("rank").to_pylist()
    values = table.column("activation").to_pylist()
    source_ids = table.column("source_id").to_pylist()
    xs, ys = table.column("x").to_pylist(), table.column("y").to_pylist()
    crops = table.column("crop")
    groups: dict[tuple[int, str], dict[int, int]] = defaultdict(dict)  # -> rank -> row
    for row, (channel, bucket) in enumerate(zip(channels, buckets, strict=True)):
        if channel >= 0 and bucket in BUCKETS:
            groups[(channel, bucket)][ranks[row]] = row
    for (channel, bucket), rows_by_rank in sorted(groups.items()):
        rows = [rows_by_rank[r] for r in sorted(rows_by_rank)]
        target = entry(channel)
        target.examples[bucket] = images.write_sheet(
            f"{channel}-{bucket.replace('_', '-')}",
            [crops[r].as_py() for r in rows],
            [_number(values[r]) for r in rows],
        )
        target.sources[bucket] = [[source_ids[r], xs[r], ys[r]] for r in rows]
    directions = table.filter(pa.array([c < 0 for c in channels]))
    return directions if directions.num_rows else None


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def downsample(values: list[float], points: int) -> list[float | None]:
    """At most `points` evenly spaced samples, first and last kept, rounded for a small file."""
    if len(values) > points:
        step = (len(values) - 1) / (points - 1)
        values = [values[round(i * step)] for i in range(points)]
    return [float(f"{v:.4g}") if math.isfinite(v) else None for v in values]
