"""Comparing two checkpoints' probe tables: unit matching and CKA per layer, as store tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from atlas.core.schema import CKA_SCHEMA, MATCH_SCHEMA, keyed_table
from atlas.kinds.timeline.cka import linear_cka
from atlas.kinds.timeline.match import match_units


def signatures(probe: pa.Table, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """A layer's (positions x channels) signature matrix and dead mask, in channel order."""
    rows = probe.filter(pa.compute.equal(probe.column("layer"), layer)).sort_by("channel")
    matrix = np.stack(rows.column("signature").to_numpy(zero_copy_only=False)).T
    return matrix, rows.column("dead").to_numpy(zero_copy_only=False)


def compare(before: pa.Table, after: pa.Table, role_threshold: float, unit_key: str) -> dict[str, pa.Table]:
    """The `match` and `cka` tables of every layer the two probe tables share."""
    matches, ckas = [], []
    layers = [layer for layer in dict.fromkeys(before.column("layer").to_pylist())]
    for layer in layers:
        a, dead_a = signatures(before, layer)
        b, dead_b = signatures(after, layer)
        if a.shape != b.shape:  # the layer changed shape: no unit has a counterpart
            continue
        matching = match_units(a, b, dead_a, dead_b, role_threshold)
        count = a.shape[1]
        matches.append(
            keyed_table(
                {
                    "layer": [layer] * count,
                    "channel": np.arange(count, dtype=np.int32),
                    "matched": matching.matched.astype(np.int32),
                    "correlation": matching.correlation.astype(np.float32),
                    "status": list(matching.status),
                },
                MATCH_SCHEMA,
                unit_key,
            )
        )
        ckas.append(keyed_table({"layer": [layer], "cka": [linear_cka(a, b)]}, CKA_SCHEMA, unit_key))
    return {
        "match": pa.concat_tables(matches) if matches else MATCH_SCHEMA.empty_table(),
        "cka": pa.concat_tables(ckas) if ckas else CKA_SCHEMA.empty_table(),
    }
