"""An SAE layer's features as the channel view lists them: decoder neighbours and logit effects."""

from __future__ import annotations

from atlas.store.store import Store

COLUMNS = ["channel", "nearest", "nearest_cosine", "raises", "raises_by", "lowers", "lowers_by"]


def read_features(store: Store, layer: str) -> dict[int, dict[str, list]]:
    """Feature -> {"near": [[feature, cosine]], "up": [[class, change]], "down": [[class, change]]}."""
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
    return found
