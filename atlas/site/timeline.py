"""The timeline pages: how each channel changes across the checkpoints of a series.

Read from the timeline store (`<out>/timeline`, atlas.kinds.timeline) one layer at a time: a page per
layer (CKA between consecutive checkpoints, one row per channel with a sparkline and what
happened to it) and a page per channel (filmstrips of the optimized image by index and following
the match, each scanned checkpoint's top dataset examples, curves of its activation statistics).
Curves are inline SVG: no request leaves the page, and a 1,024-channel layer page stays small
because each row carries one short polyline; example thumbnails load lazily, four per checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import Environment

from atlas.site.series import TIMELINE_DIR, Checkpoint, is_done, stored_series
from atlas.site.slugs import layer_slugs
from atlas.store.store import Store, open_store

PROBE_COLUMNS = ["layer", "channel", "max", "mean", "active"]
STATS = (("max", "max activation"), ("mean", "mean activation"), ("active", "fraction of positions active"))
ALERTS = ("died", "born", "changed")
EXAMPLES_SHOWN = 4  # top dataset examples per scanned checkpoint on a channel page
EXAMPLE_COLUMNS = ["channel", "bucket", "rank", "thumb"]
ALERTS_SHOWN = 12  # per layer and kind on the index; the layer page lists them all
CURVE_W, CURVE_H, SPARK_W, SPARK_H = 240, 64, 80, 16


@dataclass(frozen=True)
class Curve:
    """An SVG polyline of one series of values (None: no value there), with its range for labels."""

    points: str
    low: float
    high: float
    dots: tuple[tuple[float, float], ...] = ()


def curve(values: Sequence[float | None], width: int, height: int) -> Curve | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    low, high = min(known), max(known)
    span = (high - low) or 1.0
    step = width / max(len(values) - 1, 1)
    dots = tuple(
        (round(i * step, 1), round(height - 2 - (v - low) / span * (height - 4), 1))
        for i, v in enumerate(values)
        if v is not None
    )
    return Curve(" ".join(f"{x:g},{y:g}" for x, y in dots), low, high, dots)


@dataclass
class ChannelTimeline:
    channel: int
    stats: dict[str, list[float | None]]
    status: list[str | None]  # what happened between checkpoint i-1 and i (None for i = 0)
    follow: list[int | None]  # the channel's feature followed through the matches
    images: list[str | None] = field(default_factory=list)  # by index, per checkpoint
    examples: dict[int, list[str]] = field(default_factory=dict)  # checkpoint position -> top crops
    followed: list[str | None] = field(default_factory=list)  # following the match

    @property
    def latest(self) -> tuple[int, str] | None:
        """The newest rendered checkpoint's position and image."""
        found = [(p, src) for p, src in enumerate(self.images) if src]
        return found[-1] if found else None

    @property
    def events(self) -> list[tuple[int, str]]:
        return [(i, s) for i, s in enumerate(self.status) if s in ALERTS]


@dataclass
class TimelineLayer:
    name: str
    slug: str
    cka: list[float | None]  # between checkpoint i-1 and i (None for i = 0)
    channels: list[ChannelTimeline]
    alerts: dict[str, list[tuple[int, int]]]  # status -> (channel, checkpoint position)


def timeline_store_of(store: Store) -> Store:
    """The timeline store inside a job's store (local folder or bucket)."""
    return open_store(f"{store.uri.rstrip('/')}/{TIMELINE_DIR}")


def has_timeline(store: Store) -> bool:
    if store.root is not None and not (store.root / TIMELINE_DIR).is_dir():
        return False  # opening a store is not free of side effects on disk: ask only when there is one
    return bool(timeline_store_of(store).entries())


def _layer(store: Store, series: Sequence[Checkpoint], name: str, slug: str) -> TimelineLayer | None:
    count = len(series)
    by_channel: dict[int, ChannelTimeline] = {}

    def channel(c: int) -> ChannelTimeline:
        if c not in by_channel:
            by_channel[c] = ChannelTimeline(
                c,
                {s: [None] * count for s, _ in (*STATS, ("activation", ""))},
                [None] * count,
                [None] * count,
            )
        return by_channel[c]

    cka: list[float | None] = [None] * count
    matched: list[dict[int, int]] = [{} for _ in range(count)]
    for position, checkpoint in enumerate(series):
        if is_done(store, checkpoint.probe_key):
            rows = store.read_unit(checkpoint.probe_key, "probe", columns=PROBE_COLUMNS).to_pylist()
            for row in rows:
                if row["layer"] == name:
                    for stat, _ in STATS:
                        channel(row["channel"]).stats[stat][position] = row[stat]
        if checkpoint.match_key and is_done(store, checkpoint.match_key):
            for row in store.read_unit(checkpoint.match_key, "match").to_pylist():
                if row["layer"] == name:
                    channel(row["channel"]).status[position] = row["status"]
                    matched[position][row["channel"]] = row["matched"]
            for row in store.read_unit(checkpoint.match_key, "cka").to_pylist():
                if row["layer"] == name:
                    cka[position] = row["cka"]
    if not by_channel:
        return None
    for c, timeline in by_channel.items():
        index: int | None = c
        for position in range(count):
            if position and index is not None:
                index = matched[position].get(index)
                index = None if index is None or index < 0 else index
            timeline.follow[position] = index
    alerts: dict[str, list[tuple[int, int]]] = {kind: [] for kind in ALERTS}
    for timeline in sorted(by_channel.values(), key=lambda t: t.channel):
        for position, status in timeline.events:
            alerts[status].append((timeline.channel, position))
    return TimelineLayer(name, slug, cka, [by_channel[c] for c in sorted(by_channel)], alerts)


def _write_images(store: Store, series: Sequence[Checkpoint], layer: TimelineLayer, root: Path) -> None:
    """The optimized image (objective `channel`) of every rendered checkpoint, as files."""
    folder = root / TIMELINE_DIR / layer.slug
    srcs: dict[tuple[int, int], str] = {}
    by_channel = {t.channel: t for t in layer.channels}
    for position, checkpoint in enumerate(series):
        for key in checkpoint.render_keys:
            entry = store.entry(key)
            if entry is None or entry.layer != layer.name or not is_done(store, key):
                continue
            table = store.read_unit(
                key, "render", columns=["channel", "objective", "variant", "image", "activation"]
            )
            for row in table.to_pylist():
                if row["objective"] != "channel" or row["variant"] != 0 or row["channel"] not in by_channel:
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{position}-{row['channel']}.png"
                (folder / name).write_bytes(row["image"])
                srcs[(position, row["channel"])] = f"{TIMELINE_DIR}/{layer.slug}/{name}"
                by_channel[row["channel"]].stats["activation"][position] = row["activation"]
    for timeline in layer.channels:
        timeline.images = [srcs.get((p, timeline.channel)) for p in range(len(series))]
        timeline.followed = [None if c is None else srcs.get((p, c)) for p, c in enumerate(timeline.follow)]


def _write_examples(
    store: Store, job_store: Store, series: Sequence[Checkpoint], layer: TimelineLayer, root: Path
) -> None:
    """Each scanned checkpoint's top dataset examples (thumbnails), as files.

    A checkpoint's own examples units come from the timeline store; a checkpoint the timeline did
    not scan shows the job's examples when the job itself ran on its weights (`atlas run`).
    """
    by_channel = {t.channel: t for t in layer.channels}
    folder = root / TIMELINE_DIR / layer.slug
    found: dict[tuple[int, int], list[tuple[int, str]]] = {}

    def add(position: int, tables: Iterable[pa.Table]) -> None:
        for table in tables:
            top = pc.and_(
                pc.equal(table.column("bucket"), "max"), pc.less(table.column("rank"), EXAMPLES_SHOWN)
            )
            for row in table.filter(top).to_pylist():
                if row["channel"] not in by_channel:
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                name = f"ex-{position}-{row['channel']}-{row['rank']}.png"
                (folder / name).write_bytes(row["thumb"])
                found.setdefault((position, row["channel"]), []).append(
                    (row["rank"], f"{TIMELINE_DIR}/{layer.slug}/{name}")
                )

    for position, checkpoint in enumerate(series):
        keys = [k for k in checkpoint.examples_keys if _unit_of(store, k, layer.name)]
        add(position, (store.read_unit(k, "examples", columns=EXAMPLE_COLUMNS) for k in keys))
    scanned = {position for position, _ in found}
    digest = job_store.job().get("model_digest")
    positions = [p for p, c in enumerate(series) if c.digest == digest and p not in scanned]
    if positions and layer.name in job_store.layers("examples"):
        add(positions[-1], job_store.read_layer("examples", layer.name, columns=EXAMPLE_COLUMNS))
    for (position, channel), crops in found.items():
        by_channel[channel].examples[position] = [src for _, src in sorted(crops)]


def _unit_of(store: Store, key: str, layer: str) -> bool:
    """Whether `key` is a finished unit of `layer` in the store."""
    entry = store.entry(key)
    return entry is not None and entry.layer == layer and is_done(store, key)


def build_timeline(
    job_store: Store, root: Path, env: Environment, common: dict, slugs: dict[str, str]
) -> tuple[list[str], list[TimelineLayer]]:
    """Write the timeline pages into the site folder `root`.

    Returns the checkpoints' labels and each layer's summary for the index (alerts, no channels).
    """
    store = timeline_store_of(job_store)
    series = stored_series(store)
    if not series or not is_done(store, series[-1].probe_key):
        return [], []
    layers = list(
        dict.fromkeys(
            store.read_unit(series[-1].probe_key, "probe", columns=["layer"]).column("layer").to_pylist()
        )
    )
    slugs = {**layer_slugs(layers), **slugs}
    labels = [c.label for c in series]
    summaries = []
    for name in layers:
        layer = _layer(store, series, name, slugs.get(name, name))
        if layer is None:
            continue
        _write_images(store, series, layer, root)
        _write_examples(store, job_store, series, layer, root)
        page = {"labels": labels, "layer": layer, "current": None, "curve": curve, **common}
        env.get_template("timeline_layer.html").stream(
            spark=(SPARK_W, SPARK_H), size=(CURVE_W, CURVE_H), **page
        ).dump(str(root / f"{layer.slug}.timeline.html"), encoding="utf-8")
        template = env.get_template("timeline_channel.html")
        for timeline in layer.channels:
            template.stream(unit=timeline, stats=STATS, size=(CURVE_W, CURVE_H), **page).dump(
                str(root / f"{layer.slug}.timeline.{timeline.channel}.html"), encoding="utf-8"
            )
        layer.channels = []  # the index needs the alerts only: memory stays bounded by a layer
        summaries.append(layer)
    return labels, summaries
