"""An SAE layer's features as the channel view lists them: decoder neighbours and logit effects."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from atlas.site.channels import ChannelEntry
from atlas.store.store import Store

FIRES = 2.0**-10  # a feature fires where it is at least this (the histogram's first bin above 0)
DENSE = 0.10  # a feature active at more than this share of positions is dense

COLUMNS = ["channel", "nearest", "nearest_cosine", "raises", "raises_by", "lowers", "lowers_by"]


def read_features(
    store: Store, layer: str, classes: Sequence[str] | None = None
) -> dict[int, dict[str, list]]:
    """Feature -> {"near": [[feature, cosine]], "up": [[class, change]], "down": [[class, change]]};
    with the model's class names (job.json `classes`) each class pair is [class, change, name]."""
    table = store.read("features", layer, COLUMNS)
    if table is None:
        return {}
    found = {}
    for row in table.to_pylist():
        found[row["channel"]] = {
            key: [[int(i), round(float(v), 3)] for i, v in zip(row[ids], row[values], strict=True)]
            for key, ids, values in (
                ("near", "nearest", "nearest_cosine"),
                ("up", "raises", "raises_by"),
                ("down", "lowers", "lowers_by"),
            )
        }
        if classes:
            for pair in found[row["channel"]]["up"] + found[row["channel"]]["down"]:
                pair.append(class_name(classes, pair[0]))
    return found


def class_name(classes: Sequence[str] | None, number: int | None) -> str:
    """Class `number`'s name, or "" where the model has no names (or none that far)."""
    if not classes or number is None or not 0 <= number < len(classes):
        return ""
    return str(classes[number])


def feature_health(channels: Sequence[ChannelEntry]) -> dict[str, list[int] | int]:
    """An SAE layer's dead features (firing in no image of the dataset) and dense ones (firing at
    more than DENSE of all positions), from the scan's counts of images (else its histograms, else
    the best example's value)."""
    dead, dense, recorded = [], [], 0
    for entry in channels:
        best = entry.values.get("max", (None,))[0]
        if entry.active is None and best is None:
            continue
        recorded += 1
        if entry.images_active is not None:
            never = entry.images_active == 0.0
        else:
            never = (entry.active == 0.0) if entry.active is not None else best < FIRES
        if never:
            dead.append(entry.channel)
        elif entry.active is not None and entry.active > DENSE:
            dense.append(entry.channel)
    return {"recorded": recorded, "dead": dead, "dense": dense}


def feature_index(
    channels: Sequence[ChannelEntry],
    features: Mapping[int, dict[str, list]],
    enriched: Mapping[int, list],
    classes: Sequence[str] | None = None,
) -> list[list]:
    """One row per feature of an SAE layer for its searchable index: [feature, its enriched label
    ("" without one), the class it raises most (None before its `features` unit), share of
    positions and share of images where it fires (None when not recorded)], and when the model
    names its classes (job.json `classes`) that class's name ("" without a class)."""
    rows = []
    for entry in channels:
        raised = features[entry.channel]["up"][0][0] if features.get(entry.channel, {}).get("up") else None
        row = [
            entry.channel,
            enriched[entry.channel][0] if entry.channel in enriched else "",
            raised,
            None if entry.active is None else float(f"{entry.active:.4g}"),
            None if entry.images_active is None else float(f"{entry.images_active:.4g}"),
        ]
        rows.append([*row, class_name(classes, raised)] if classes else row)
    return rows


def index_file(slug: str) -> str:
    """The script that holds a layer's feature index, beside its page `<slug>.features.html`."""
    return f"{slug}.features.js"


def write_feature_index(folder: Path, slug: str, rows: list[list]) -> None:
    """The index's rows as a script (file:// has no fetch): about 40 bytes a feature, so a layer of
    49,152 features is about 2 MB, loaded by its index page only."""
    text = json.dumps(rows, separators=(",", ":"), allow_nan=False)
    (folder / index_file(slug)).write_text(f"window.atlasFeatureIndex = {text};\n", encoding="utf-8")
