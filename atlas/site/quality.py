"""The quality record as the site shows it: one summary per channel, its flags, a layer's spread.

Per channel the record describes its main picture (the `channel` objective, else `neuron`, else
the first of the diversity set) and adds what only the whole atlas knows: the activation
relative to the best dataset example, and the interpretability proxy of atlas/interpretability.py.
"""

from __future__ import annotations

import math
import statistics

from atlas.interpretability import layer_proxies
from atlas.quality import THRESHOLDS, flags
from atlas.site.channels import ChannelEntry
from atlas.store import Store

QUALITY_COLUMNS = [
    "channel",
    "objective",
    "variant",
    "peak_activation",
    "robust_activation",
    "high_frequency",
]
MAIN_PICTURE = ("channel", "neuron", "diversity")  # the picture a channel's record describes
# key -> label, in the order the channel view lists them.
MEASURES = {
    "relative_activation": "Activation / best example",
    "robust_activation": "Kept under the check set",
    "high_frequency": "High-frequency energy",
    "diversity_similarity": "Diversity set similarity",
    "proxy_optimized": "2AFC from optimized images",
    "proxy_examples": "2AFC from top examples",
}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def attach_quality(store: Store, layer: str, channels: list[ChannelEntry]) -> None:
    """Fill each entry's `quality` (measure -> value, proxies with their interval) and `flags`."""
    main: dict[int, dict] = {}
    similarity: dict[int, float] = {}
    table = store.read("quality", layer, [*QUALITY_COLUMNS, "diversity_similarity"])
    for row in table.to_pylist() if table is not None else []:
        if row["objective"] not in MAIN_PICTURE or (row["objective"] == "diversity" and row["variant"]):
            continue
        if row["diversity_similarity"] is not None:
            similarity[row["channel"]] = row["diversity_similarity"]
        held = main.get(row["channel"])
        if held is None or MAIN_PICTURE.index(row["objective"]) < MAIN_PICTURE.index(held["objective"]):
            main[row["channel"]] = row
    proxies = layer_proxies(store, layer)
    for entry in channels:
        record: dict[str, float | None] = {}
        row = main.get(entry.channel)
        if row is not None:
            record["robust_activation"] = _finite(row["robust_activation"])
            record["high_frequency"] = _finite(row["high_frequency"])
            best = (entry.values.get("max") or (None,))[0]
            if best is not None and best > 0 and row["peak_activation"] is not None:
                record["relative_activation"] = _finite(row["peak_activation"] / best)
        record["diversity_similarity"] = _finite(similarity.get(entry.channel))
        for judged_from, result in proxies.get(entry.channel, {}).items():
            if result is not None:
                record[f"proxy_{judged_from}"] = result.accuracy
                record[f"proxy_{judged_from}_interval"] = [round(result.low, 3), round(result.high, 3)]
        entry.quality = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if v is not None
        }
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
    """The thresholds as the page script reads them: measure -> [direction, limit, label]."""
    return {name: [direction, limit, MEASURES[name]] for name, (direction, limit) in THRESHOLDS.items()}
