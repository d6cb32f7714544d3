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
    "robust_relative": "Kept, relative to its examples",
    "natural_path": "Natural path",
    "robust_activation": "Kept under the check set",
    "high_frequency": "High-frequency energy",
    "diversity_similarity": "Diversity set similarity",
    "proxy_optimized": "2AFC from optimized images",
    "proxy_examples": "2AFC from top examples",
}


# key -> (what the figure is, what to do about it), shown beside it in the channel view.
EXPLAINED = {
    "relative_activation": (
        "The main picture's peak divided by the best top example's peak, both shown above.",
        "Below 1 the picture excites the channel less than a photo of the dataset does: raise "
        "render.steps or render.lr.",
    ),
    "robust_relative": (
        "The share of its activation the picture keeps under the check set (below) divided by "
        "the share the channel's top dataset examples keep under the same checks: natural images "
        "set the bar for what the channel tolerates.",
        "Below the threshold the picture depends on its exact pixels, as adversarial noise does: "
        "use stronger transforms (render.transforms) or more steps at a coarse scale.",
    ),
    "natural_path": (
        "Does the picture excite the channel the way its top examples do? Its pattern in the "
        "layers below, where the channel fires, compared with the top examples' pattern: 1 is as "
        "close as the top examples are to each other, 0 as close as a random dataset photo (in "
        "brackets: the similarities of the picture, of random photos, of the top examples).",
        "Below the threshold the picture reaches its activation some other way than photos do "
        "(Geirhos et al. 2023), so it may not show what the channel detects in photos: trust the "
        "dataset examples over it.",
    ),
    "robust_activation": (
        "Share of the picture's activation it keeps, on average, when resized (x1.75, x0.5), "
        "rotated 30°, shifted a quarter and saved as JPEG: changes outside those the "
        "optimization saw.",
        "No threshold of its own: some channels lose activation under any resize, photos "
        "included; the figure relative to the examples (above) decides.",
    ),
    "high_frequency": (
        "Share of the picture's spectral power above a quarter cycle per pixel (white noise about "
        "0.8, a smooth photo a few hundredths).",
        "Above the threshold the picture is mostly pixel noise: keep render.decorrelate on or add "
        "render.blur_weight.",
    ),
    "diversity_similarity": (
        "Mean similarity of the diversity images' activation patterns: 1 repeats one picture.",
        "No threshold; near 1, raise render.diversity_weight to spread the set.",
    ),
    "proxy_optimized": (
        "A simulated two-alternative forced choice: given these pictures (and the bottom ones), "
        "how often an image-statistics judge picks the strongly activating photo of a "
        "(strong, weak) pair. 0.5 is chance, 1 always right; 95% interval in brackets.",
        "No threshold: compare channels. Near 0.5 the pictures do not tell you what the channel responds to.",
    ),
    "proxy_examples": (
        "The same forced choice judged from the top and bottom dataset examples instead.",
        "No threshold: the pictures above are worth most when they score near this.",
    ),
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
