"""One layer's channels: read its shards, queue one sprite per channel, keep a light view model.

The builder calls `read_layer` once per layer; it holds a layer's numbers (no pixels) and about
one unit's pictures at a time, so memory is bounded by a unit and the layer's numbers. Only known objective and bucket words become part of
file names; anything else in the store is ignored rather than trusted.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from atlas.core.schema import QUANTILE_PER_GROUP
from atlas.site.columns import Column
from atlas.site.images import LayerImages, Picture
from atlas.site.sheets import png_size
from atlas.site.sprites import SpriteLayout, sprite_layout
from atlas.site.svg import HistogramShape, histogram_shape
from atlas.site.unitwalk import UnitWalk, layer_units
from atlas.store.store import Store

INTERACTION_OBJECTIVES = ("direction", "pair", "interpolation")
QUANTILE = "quantile"
BUCKETS = ("max", "min", "slightly_positive", "slightly_negative", QUANTILE)
# Buckets whose pictures sit in the cell of their rank, one group a row (the quantile groups of an
# SAE feature; a group may hold fewer than its share), with that many cells a row.
SLOTTED = {QUANTILE: QUANTILE_PER_GROUP}

RENDER_COLUMNS = ["channel", "channel_b", "objective", "variant", "label", "image", "activation", "loss"]
EXAMPLE_COLUMNS = ["channel", "bucket", "rank", "activation", "source_id", "x", "y", "crop"]
SPRITE_FORMAT = 1  # bump when sprites are drawn differently, so earlier ones are not reused
LOSS_POINTS = 48  # a loss curve is drawn from this many samples: enough for its shape
HISTOGRAM_COLUMNS = ["channel", "edges", "counts", "active", "images_active"]
# What the first pass reads (no pixels), and the one column of pictures per table kind.
RENDER_NUMBERS = ["channel", "objective", "variant", "activation", "loss"]
PEAK_COLUMNS = ["channel", "objective", "variant", "peak_activation"]
EXAMPLE_NUMBERS = ["channel", "bucket", "rank", "activation", "source_id", "x", "y"]
PIXELS = {"render": "image", "examples": "crop"}


@dataclass
class ChannelEntry:
    """What a layer page shows for one channel: its sprite and numbers, no pixels."""

    channel: int
    sprite: Picture | None = None
    # column ("channel", "diversity", "max", ...) -> values shown for it, one per picture in order.
    # Every value is a peak, the channel's strongest position in the picture (its largest value;
    # its smallest for bottom examples and the negative picture), for photos and optimized
    # pictures alike; an optimized picture without a quality record shows its objective instead.
    values: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Optimized columns whose values are objective values (no quality record gave their peak).
    objective_values: list[str] = field(default_factory=list)
    # Example columns whose examples all share one activation (bucket -> that value): a tie the
    # ranking cannot break, e.g. the bottom of a ReLU channel, where any image that leaves the
    # channel at 0 everywhere qualifies; the page says so instead of showing arbitrary images.
    ties: dict[str, float] = field(default_factory=dict)
    # Share of the dataset's positions where the channel is at least 2^-10 (None: not recorded).
    active: float | None = None
    histogram: HistogramShape | None = None
    # Loaded by the channel view only (details.js): loss curves per objective and, per bucket,
    # where each example comes from as [source_id, x, y].
    losses: dict[str, list[float | None]] = field(default_factory=dict)
    sources: dict[str, list[list]] = field(default_factory=dict)
    sprite_key: str = ""  # what the sprite was made from; equal keys mean equal sprites
    # The quality record (atlas/site/quality.py): measure -> value, and the measures that fail.
    quality: dict[str, float | list[float]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    # Share of the dataset's images where the channel fires somewhere (SAE layers; else None).
    images_active: float | None = None
    # The quantile groups (SAE layers; the channel view only): "top", the channel's largest
    # activation, whose range the groups cut, and "examples", each [rank, activation, source_id, x, y].
    quantiles: dict[str, Any] = field(default_factory=dict)

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


@dataclass(slots=True)
class _Image:
    """Where one picture of a channel lies (unit and row) and the numbers shown beside it (one
    per picture of the layer: slots, no per-object dict, at 49,152 features x 70 examples)."""

    unit: str
    row: int
    value: float
    source_id: str = ""  # examples: the image, and where in it (x, y)
    x: int = 0
    y: int = 0
    loss: list[float | None] = field(default_factory=list)  # optimized images: the loss curve, downsampled
    peak: bool = True  # the value is the picture's peak (else an optimized picture's objective)

    @property
    def source(self) -> list:
        """[source_id, x, y], as the channel view reads an example's origin."""
        return [self.source_id, self.x, self.y]


@dataclass
class _Rows:
    """One channel's pictures in the layer's render and examples units."""

    optimized: dict[str, _Image] = field(default_factory=dict)  # objective -> picture
    diversity: dict[int, _Image] = field(default_factory=dict)  # variant -> picture of the set
    # bucket -> rank -> example
    buckets: dict[str, dict[int, _Image]] = field(default_factory=lambda: defaultdict(dict))

    def pictures(self, diverse: str) -> list[tuple[str, str, list[_Image], list[int] | None]]:
        """(table kind, sprite region, its pictures in order, their cells where the region is
        SLOTTED), in the order a sprite places them."""
        regions: list[tuple[str, str, list[_Image], list[int] | None]] = [
            ("render", objective, [image], None) for objective, image in self.optimized.items()
        ]
        if self.diversity:
            regions.append(("render", diverse, [self.diversity[v] for v in sorted(self.diversity)], None))
        for bucket, by_rank in self.buckets.items():
            ranks = sorted(by_rank)
            regions.append(
                ("examples", bucket, [by_rank[r] for r in ranks], ranks if bucket in SLOTTED else None)
            )
        return regions


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

    Memory is bounded by a unit, not the layer: a first pass reads every unit's numbers (no
    pixels) and where each picture lies; a second walks the channels in order, loading a unit's
    pictures at the first channel that needs them and dropping them after the last.
    `inputs(channel)` names what a channel's sprite is made from (the content keys of its units);
    with the layout it gives the sprite's key, and a sprite of the previous build with the same
    key is linked rather than composed again, so a nightly rebuild redoes only what changed.
    `columns` (from job.json) say which objectives are single images and which one is a set.
    """
    optimized = [c.name for c in columns if c.kind == "optimized"]
    diverse = next((c.name for c in columns if c.kind == "diverse"), "")
    entries: dict[int, ChannelEntry] = {c: ChannelEntry(c) for c in expected}
    rows: dict[int, _Rows] = defaultdict(_Rows)
    interaction_renders = _index_renders(store, layer, rows, optimized, diverse)
    direction_examples = _index_examples(store, layer, rows)
    layout = _layout(store, rows, optimized, diverse)
    to_compose: list[ChannelEntry] = []
    for channel in sorted(rows):
        entry = entries.setdefault(channel, ChannelEntry(channel))
        entry.sprite_key = hashlib.sha256(f"{SPRITE_FORMAT}|{layout}|{inputs(channel)}".encode()).hexdigest()[
            :24
        ]
        _keep_numbers(entry, rows[channel], diverse)
        earlier = previous.reusable(channel, entry.sprite_key) if previous else None
        if earlier is not None:
            entry.sprite = images.link(str(channel), earlier, layout.width, layout.height)
        else:
            to_compose.append(entry)
    _compose_sprites(store, to_compose, rows, layout, diverse, images)
    for table in store.read_layer("histogram", layer):  # every column: `active` is newer than some stores
        for row in table.select([c for c in HISTOGRAM_COLUMNS if c in table.column_names]).to_pylist():
            if row["channel"] >= 0:
                entry = entries.setdefault(row["channel"], ChannelEntry(row["channel"]))
                entry.histogram = histogram_shape(row["edges"], row["counts"])
                entry.active = row.get("active")
                entry.images_active = row.get("images_active")
    return LayerContent(
        [entries[c] for c in sorted(entries)], layout, interaction_renders, direction_examples
    )


def _index_renders(
    store: Store, layer: str, rows: dict[int, _Rows], optimized: Sequence[str], diverse: str
) -> pa.Table | None:
    """First pass over the render units: each picture's place and numbers; interaction rows kept."""
    interactions = []
    for key in layer_units(store, "render", layer):
        table = store.read_unit(key, "render", RENDER_NUMBERS)
        objectives = table.column("objective").to_pylist()
        variants, reached = table.column("variant").to_pylist(), table.column("activation").to_pylist()
        losses = table.column("loss")
        peaks = _peaks(store, key)
        for row, channel in enumerate(table.column("channel").to_pylist()):
            peak = peaks.get((channel, objectives[row], variants[row]))
            value = _number(reached[row]) if peak is None else peak
            if channel >= 0 and objectives[row] == diverse:
                rows[channel].diversity[variants[row]] = _Image(key, row, value, peak=peak is not None)
            elif channel >= 0 and objectives[row] in optimized:
                loss = downsample(losses[row].as_py() or [], LOSS_POINTS)
                rows[channel].optimized[objectives[row]] = _Image(
                    key, row, value, peak=peak is not None, loss=loss
                )
        if any(o in INTERACTION_OBJECTIVES for o in objectives):
            whole = store.read_unit(key, "render", RENDER_COLUMNS)
            interactions.append(whole.filter(pa.array([o in INTERACTION_OBJECTIVES for o in objectives])))
    return pa.concat_tables(interactions).combine_chunks() if interactions else None


def _peaks(store: Store, key: str) -> dict[tuple[int, str, int], float]:
    """(channel, objective, variant) -> the picture's peak, signed as the examples' values are.

    A render unit's quality record holds each picture's peak (for a negative picture, how far
    its smallest value goes below 0); a unit without one (a store from before quality records)
    gives none, and its pictures show their objective values.
    """
    entry = store.entry(key)
    if entry is None or "quality" not in entry.tables:
        return {}
    peaks = {}
    for row in store.read_unit(key, "quality", PEAK_COLUMNS).to_pylist():
        if row["peak_activation"] is not None and math.isfinite(row["peak_activation"]):
            sign = -1.0 if row["objective"] == "negative" else 1.0
            peaks[(row["channel"], row["objective"], row["variant"])] = sign * row["peak_activation"]
    return peaks


def _index_examples(store: Store, layer: str, rows: dict[int, _Rows]) -> pa.Table | None:
    """First pass over the examples units: each example's place, value and source; directions kept."""
    directions = []
    ids: dict[str, str] = {}
    for key in layer_units(store, "examples", layer):
        table = store.read_unit(key, "examples", EXAMPLE_NUMBERS)
        channels = table.column("channel").to_pylist()
        buckets, ranks = table.column("bucket").to_pylist(), table.column("rank").to_pylist()
        values, sources = table.column("activation").to_pylist(), table.column("source_id").to_pylist()
        xs, ys = table.column("x").to_pylist(), table.column("y").to_pylist()
        for row, channel in enumerate(channels):
            if channel >= 0 and buckets[row] in BUCKETS:
                source_id = ids.setdefault(sources[row], sources[row])  # one string per image
                rows[channel].buckets[buckets[row]][ranks[row]] = _Image(
                    key, row, _number(values[row]), source_id, xs[row], ys[row]
                )
        if any(c < 0 for c in channels):
            whole = store.read_unit(key, "examples", EXAMPLE_COLUMNS)
            directions.append(whole.filter(pa.array([c < 0 for c in channels])))
    return pa.concat_tables(directions).combine_chunks() if directions else None


def _layout(
    store: Store, rows: dict[int, _Rows], optimized: Sequence[str], diverse: str
) -> SpriteLayout | None:
    """The layer's sprite layout: present objectives, largest diversity set and bucket sizes."""
    if not rows:
        return None
    objectives = [o for o in optimized if any(o in r.optimized for r in rows.values())]
    diversity = max(len(r.diversity) for r in rows.values())
    buckets = [(b, max(_cells(b, r.buckets.get(b, {})) for r in rows.values())) for b in BUCKETS]
    buckets = [(bucket, count) for bucket, count in buckets if count]
    first_render = next(
        (i for r in rows.values() for i in [*r.optimized.values(), *r.diversity.values()]), None
    )
    first_crop = next(
        (i for r in rows.values() for ranks in r.buckets.values() for i in ranks.values()), None
    )
    optimized_size = (1, 1) if first_render is None else png_size(_picture(store, "render", first_render))
    crop_size = (1, 1) if first_crop is None else png_size(_picture(store, "examples", first_crop))
    return sprite_layout(objectives, optimized_size, diversity, buckets, crop_size, diverse, SLOTTED)


def _cells(bucket: str, by_rank: dict[int, _Image]) -> int:
    """Cells a bucket's pictures take: one each, or up to the last rank where they are SLOTTED."""
    if bucket in SLOTTED and by_rank:
        return max(by_rank) + 1
    return len(by_rank)


def _picture(store: Store, kind: str, image: _Image) -> bytes:
    return store.read_unit(image.unit, kind, [PIXELS[kind]]).column(0)[image.row].as_py()


def _keep_numbers(entry: ChannelEntry, rows: _Rows, diverse: str) -> None:
    """The numbers a page shows for the channel: values reached, loss curves, example sources."""
    for kind, region, pictures, slots in rows.pictures(diverse):
        if region == QUANTILE:
            best = rows.buckets.get("max", {}).get(0)
            examples = [
                [rank, image.value, *image.source] for rank, image in zip(slots or (), pictures, strict=True)
            ]
            entry.quantiles = {"top": best.value if best else examples[0][1], "examples": examples}
            continue
        entry.values[region] = tuple(image.value for image in pictures)
        if not all(image.peak for image in pictures):
            entry.objective_values.append(region)
        if kind == "examples":
            entry.sources[region] = [image.source for image in pictures]
            values = entry.values[region]
            if len(values) > 1 and math.isfinite(values[0]) and all(v == values[0] for v in values):
                entry.ties[region] = values[0]
        elif region in rows.optimized:
            entry.losses[region] = rows.optimized[region].loss


def _compose_sprites(
    store: Store,
    entries: Sequence[ChannelEntry],
    rows: dict[int, _Rows],
    layout: SpriteLayout,
    diverse: str,
    images: LayerImages,
) -> None:
    """Second pass: queue each channel's sprite, holding only the units that channel uses."""
    regions = [rows[entry.channel].pictures(diverse) for entry in entries]
    steps = [
        [(kind, image.unit) for kind, _, pictures, _ in parts for image in pictures] for parts in regions
    ]
    walk = UnitWalk(store, steps, PIXELS)
    for step, (entry, parts) in enumerate(zip(entries, regions, strict=True)):
        placements = []
        for kind, region, pictures, slots in parts:
            pngs = [walk.picture(kind, p.unit, p.row) for p in pictures]
            placements += layout.placements(region, pngs, slots)
        if placements:
            entry.sprite = images.compose(
                str(entry.channel), layout.width, layout.height, placements, layout.boxes()
            )
        walk.done(step)


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def downsample(values: list[float], points: int) -> list[float | None]:
    """At most `points` evenly spaced samples, first and last kept, rounded for a small file."""
    if len(values) > points:
        step = (len(values) - 1) / (points - 1)
        values = [values[round(i * step)] for i in range(points)]
    return [float(f"{v:.4g}") if math.isfinite(v) else None for v in values]
