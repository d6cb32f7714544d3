"""One layer's channels: read its shards, queue one sprite per channel, keep a light view model.

The builder calls `read_layer` once per layer and drops the result after rendering the page,
so memory is bounded by the largest layer. Only known objective and bucket words become part of
file names; anything else in the store is ignored rather than trusted.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from atlas.site.columns import Column
from atlas.site.images import LayerImages, Picture
from atlas.site.sheets import png_size
from atlas.site.sprites import SpriteLayout, sprite_layout
from atlas.site.svg import HistogramShape, histogram_shape
from atlas.store import Store

INTERACTION_OBJECTIVES = ("direction", "pair", "interpolation")
BUCKETS = ("max", "min", "slightly_positive", "slightly_negative")

RENDER_COLUMNS = ["channel", "channel_b", "objective", "variant", "label", "image", "activation", "loss"]
EXAMPLE_COLUMNS = ["channel", "bucket", "rank", "activation", "source_id", "x", "y", "crop"]
SPRITE_FORMAT = 1  # bump when sprites are drawn differently, so earlier ones are not reused
LOSS_POINTS = 48  # a loss curve is drawn from this many samples: enough for its shape
HISTOGRAM_COLUMNS = ["channel", "edges", "counts"]


@dataclass
class ChannelEntry:
    """What a layer page shows for one channel: its sprite and numbers, no pixels."""

    channel: int
    sprite: Picture | None = None
    # column ("channel", "diversity", "max", ...) -> values shown for it: the activation an
    # optimized image reaches, or one activation per example in rank order.
    values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    histogram: HistogramShape | None = None
    # Loaded by the channel view only (details.js): loss curves per objective and, per bucket,
    # where each example comes from as [source_id, x, y].
    losses: dict[str, list[float | None]] = field(default_factory=dict)
    sources: dict[str, list[list]] = field(default_factory=dict)
    sprite_key: str = ""  # what the sprite was made from; equal keys mean equal sprites
    # The quality record (atlas/site/quality.py): measure -> value, and the measures that fail.
    quality: dict[str, float | list[float]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.values or self.histogram)


@dataclass
class LayerContent:
    """A layer's channel entries, their shared sprite layout, and the rows for interactions."""

    channels: list[ChannelEntry]
    layout: SpriteLayout | None
    interaction_renders: pa.Table | None
    direction_examples: pa.Table | None


@dataclass
class _Rows:
    """Row numbers of one channel's images in the layer's render and examples tables."""

    optimized: dict[str, int] = field(default_factory=dict)  # objective -> row
    diversity: dict[int, int] = field(default_factory=dict)  # variant -> row of the diverse objective
    buckets: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))  # rank -> row


@dataclass(frozen=True)
class PreviousSprites:
    """The sprites the previous build made for this layer, and the key each was made from."""

    folder: Path
    keys: dict[str, str]  # channel (as text) -> sprite key

    def reusable(self, channel: int, key: str) -> Path | None:
        path = self.folder / f"{channel}.jpg"
        if self.keys.get(str(channel)) != key or self.folder.is_symlink() or path.is_symlink():
            return None  # a link in the old site is never followed: the sprite is drawn again
        return path if path.is_file() else None


def read_layer(
    store: Store,
    layer: str,
    images: LayerImages,
    expected: Iterable[int],
    inputs: Callable[[int], str],
    columns: Sequence[Column],
    previous: PreviousSprites | None = None,
) -> LayerContent:
    """Read render, examples and histogram shards of one layer and queue one sprite per channel.

    `inputs(channel)` names what a channel's sprite is made from (the content keys of its units);
    with the layout it gives the sprite's key, and a sprite of the previous build with the same
    key is linked rather than composed again, so a nightly rebuild redoes only what changed.
    `columns` (from job.json) say which objectives are single images and which one is a set.
    """
    optimized = [c.name for c in columns if c.kind == "optimized"]
    diverse = next((c.name for c in columns if c.kind == "diverse"), None)
    entries: dict[int, ChannelEntry] = {c: ChannelEntry(c) for c in expected}
    renders = _read(store, "render", layer, RENDER_COLUMNS)
    examples = _read(store, "examples", layer, EXAMPLE_COLUMNS)
    rows: dict[int, _Rows] = defaultdict(_Rows)
    interaction_renders = direction_examples = None
    if renders is not None:
        objectives = renders.column("objective").to_pylist()
        variants = renders.column("variant").to_pylist()
        for row, channel in enumerate(renders.column("channel").to_pylist()):
            if channel >= 0 and objectives[row] == diverse:
                rows[channel].diversity[variants[row]] = row
            elif channel >= 0 and objectives[row] in optimized:
                rows[channel].optimized[objectives[row]] = row
        interactions = renders.filter(pa.array([o in INTERACTION_OBJECTIVES for o in objectives]))
        interaction_renders = interactions if interactions.num_rows else None
    if examples is not None:
        channels = examples.column("channel").to_pylist()
        buckets, ranks = examples.column("bucket").to_pylist(), examples.column("rank").to_pylist()
        for row, channel in enumerate(channels):
            if channel >= 0 and buckets[row] in BUCKETS:
                rows[channel].buckets[buckets[row]][ranks[row]] = row
        directions = examples.filter(pa.array([c < 0 for c in channels]))
        direction_examples = directions if directions.num_rows else None
    layout = _layout(rows, renders, examples, optimized, diverse or "")
    for channel in sorted(rows):
        entry = entries.setdefault(channel, ChannelEntry(channel))
        entry.sprite_key = hashlib.sha256(f"{SPRITE_FORMAT}|{layout}|{inputs(channel)}".encode()).hexdigest()[
            :24
        ]
        earlier = previous.reusable(channel, entry.sprite_key) if previous else None
        _queue_sprite(entry, rows[channel], layout, diverse or "", renders, examples, images, earlier)
    histograms = store.read("histogram", layer, HISTOGRAM_COLUMNS)
    if histograms is not None:
        for row in histograms.to_pylist():
            if row["channel"] >= 0:
                entry = entries.setdefault(row["channel"], ChannelEntry(row["channel"]))
                entry.histogram = histogram_shape(row["edges"], row["counts"])
    return LayerContent(
        [entries[c] for c in sorted(entries)], layout, interaction_renders, direction_examples
    )


def _read(store: Store, kind: str, layer: str, columns: list[str]) -> pa.Table | None:
    table = store.read(kind, layer, columns)
    return None if table is None else table.combine_chunks()


def _layout(
    rows: dict[int, _Rows],
    renders: pa.Table | None,
    examples: pa.Table | None,
    optimized: Sequence[str],
    diverse: str,
) -> SpriteLayout | None:
    """The layer's sprite layout: present objectives, largest diversity set and bucket sizes."""
    if not rows:
        return None
    objectives = [o for o in optimized if any(o in r.optimized for r in rows.values())]
    diversity = max(len(r.diversity) for r in rows.values())
    buckets = [(b, max(len(r.buckets.get(b, ())) for r in rows.values())) for b in BUCKETS]
    buckets = [(bucket, count) for bucket, count in buckets if count]
    optimized_size = crop_size = (1, 1)
    first_render = next(
        (r for c in rows.values() for r in [*c.optimized.values(), *c.diversity.values()]), None
    )
    if first_render is not None:
        optimized_size = png_size(renders.column("image")[first_render].as_py())
    first_crop = next(
        (r for c in rows.values() for ranks in c.buckets.values() for r in ranks.values()), None
    )
    if first_crop is not None:
        crop_size = png_size(examples.column("crop")[first_crop].as_py())
    return sprite_layout(objectives, optimized_size, diversity, buckets, crop_size, diverse)


def _queue_sprite(
    entry: ChannelEntry,
    rows: _Rows,
    layout: SpriteLayout,
    diverse: str,
    renders: pa.Table | None,
    examples: pa.Table | None,
    images: LayerImages,
    earlier: Path | None,
) -> None:
    """Keep the channel's numbers; link its earlier sprite, or place its images and queue a new one."""
    placements = []
    pixels = earlier is None
    if renders is not None:
        pngs, reached, losses = renders.column("image"), renders.column("activation"), renders.column("loss")
        for objective, row in rows.optimized.items():
            if pixels:
                placements += layout.placements(objective, [pngs[row].as_py()])
            entry.values[objective] = (_number(reached[row].as_py()),)
            entry.losses[objective] = downsample(losses[row].as_py() or [], LOSS_POINTS)
        if rows.diversity:
            ordered = [rows.diversity[v] for v in sorted(rows.diversity)]
            if pixels:
                placements += layout.placements(diverse, [pngs[r].as_py() for r in ordered])
            entry.values[diverse] = tuple(_number(reached[r].as_py()) for r in ordered)
    if examples is not None:
        crops, values = examples.column("crop"), examples.column("activation")
        sources, xs, ys = examples.column("source_id"), examples.column("x"), examples.column("y")
        for bucket, by_rank in rows.buckets.items():
            ordered = [by_rank[rank] for rank in sorted(by_rank)]
            if pixels:
                placements += layout.placements(bucket, [crops[r].as_py() for r in ordered])
            entry.values[bucket] = tuple(_number(values[r].as_py()) for r in ordered)
            entry.sources[bucket] = [[sources[r].as_py(), xs[r].as_py(), ys[r].as_py()] for r in ordered]
    if earlier is not None:
        entry.sprite = images.link(str(entry.channel), earlier, layout.width, layout.height)
    elif placements:
        entry.sprite = images.compose(
            str(entry.channel), layout.width, layout.height, placements, layout.boxes()
        )


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def downsample(values: list[float], points: int) -> list[float | None]:
    """At most `points` evenly spaced samples, first and last kept, rounded for a small file."""
    if len(values) > points:
        step = (len(values) - 1) / (points - 1)
        values = [values[round(i * step)] for i in range(points)]
    return [float(f"{v:.4g}") if math.isfinite(v) else None for v in values]
