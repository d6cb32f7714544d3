"""Every channel's quality record in a layer of a store, with what only the whole atlas knows.

A render unit's `quality` table describes its pictures; this adds what needs the examples: the
activation relative to the channel's best dataset example, the share kept under the check set
relative to the top examples' share and the natural-path margin (from the `trust` table), and the
2AFC interpretability proxy. The site and scripts/quality_report.py read records through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from atlas.quality.thresholds import main_pictures
from atlas.site.interpretability import layer_proxies
from atlas.store.store import Store

QUALITY_COLUMNS = [
    "channel",
    "objective",
    "variant",
    "peak_activation",
    "robust_activation",
    "high_frequency",
    "diversity_similarity",
]
TRUST_COLUMNS = ["channel", "examples_robust", "path", "path_baseline", "path_references"]
# Where the top examples are hardly closer to each other's path than random photos are, the
# natural-path figure would divide by noise: the record leaves it out.
PATH_SPREAD = 0.1


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def best_examples(store: Store, layer: str) -> dict[int, float]:
    """Each channel's rank-0 `max` example activation (a spatial maximum, like `peak_activation`)."""
    table = store.read("examples", layer, ["channel", "bucket", "rank", "activation"])
    rows = table.to_pylist() if table is not None else []
    return {r["channel"]: r["activation"] for r in rows if r["bucket"] == "max" and r["rank"] == 0}


def _trust_rows(store: Store, layer: str) -> list[dict]:
    table = store.read("trust", layer, TRUST_COLUMNS)
    return table.to_pylist() if table is not None else []


def layer_records(store: Store, layer: str, best: Mapping[int, float] | None = None) -> dict[int, dict]:
    """Channel -> record: measure -> value, and `proxy_*_interval` -> [low, high].

    The record describes the channel's main picture (the `channel` objective, else `neuron`,
    else the first of the diversity set); ``best`` (default: read from the store) gives the best
    example's activation per channel.
    """
    best = best_examples(store, layer) if best is None else best
    table = store.read("quality", layer, QUALITY_COLUMNS)
    rows = table.to_pylist() if table is not None else []
    main = main_pictures(rows)
    similarity = {
        row["channel"]: row["diversity_similarity"]
        for row in rows
        if row["objective"] == "diversity" and not row["variant"] and row["diversity_similarity"] is not None
    }
    records: dict[int, dict] = {}
    for channel, row in main.items():
        record = records.setdefault(channel, {})
        record["robust_activation"] = _finite(row["robust_activation"])
        record["high_frequency"] = _finite(row["high_frequency"])
        reference = best.get(channel)
        if reference is not None and reference > 0 and row["peak_activation"] is not None:
            record["relative_activation"] = _finite(row["peak_activation"] / reference)
        record["diversity_similarity"] = _finite(similarity.get(channel))
    for row in _trust_rows(store, layer):
        record = records.get(row["channel"])
        if record is None:
            continue
        kept, natural = record.get("robust_activation"), _finite(row["examples_robust"])
        if kept is not None and natural is not None and natural > 0:
            record["robust_relative"] = _finite(kept / natural)
        path, low, high = (_finite(row[name]) for name in ("path", "path_baseline", "path_references"))
        if path is not None and low is not None and high is not None and high - low >= PATH_SPREAD:
            record["natural_path"] = (path - low) / (high - low)
            record["natural_path_parts"] = [round(path, 3), round(low, 3), round(high, 3)]
    for channel, proxies in layer_proxies(store, layer).items():
        record = records.setdefault(channel, {})
        for judged_from, result in proxies.items():
            if result is not None:
                record[f"proxy_{judged_from}"] = result.accuracy
                record[f"proxy_{judged_from}_interval"] = [round(result.low, 3), round(result.high, 3)]
    return {
        channel: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items() if v is not None}
        for channel, record in records.items()
    }
