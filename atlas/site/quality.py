"""The quality record as the site shows it: labels, each channel's record and flags, a layer's spread."""

from __future__ import annotations

import statistics

from atlas.quality.thresholds import THRESHOLDS, flags
from atlas.site.channels import ChannelEntry
from atlas.site.layer_quality import layer_records
from atlas.store.store import Store

# key -> label, in the order the channel view lists them.
MEASURES = {
    "relative_activation": "Activation / best example",
    "robust_activation": "Kept under the check set",
    "high_frequency": "High-frequency energy",
    "diversity_similarity": "Diversity set similarity",
    "proxy_optimized": "2AFC from optimized images",
    "proxy_examples": "2AFC from top examples",
}


def attach_quality(store: Store, layer: str, channels: list[ChannelEntry]) -> None:
    """Fill each entry's `quality` and `flags`; the best example comes from the entry's values."""
    best = {c.channel: c.values["max"][0] for c in channels if c.values.get("max")}
    records = layer_records(store, layer, best)
    for entry in channels:
        entry.quality = records.get(entry.channel, {})
        entry.flags = flags(entry.quality)


def layer_spread(channels: list[ChannelEntry]) -> dict[str, float | int]:
    """What the index says about a layer: flagged channels and the median of each proxy."""
    spread: dict[str, float | int] = {
        "recorded": sum(bool(c.quality) for c in channels),
        "flagged": sum(bool(c.flags) for c in channels),
    }
    for key in ("proxy_optimized", "proxy_examples"):
        values = [c.quality[key] for c in channels if key in c.quality]
        if values:
            spread[key] = statistics.median(values)
    return spread


def thresholds_for_page() -> dict[str, list]:
    """The thresholds as the page script reads them: measure -> [direction, limit]."""
    return {name: [direction, limit] for name, (direction, limit) in THRESHOLDS.items()}
