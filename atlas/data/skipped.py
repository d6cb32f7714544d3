"""The inputs a scan could not use: one stored table, and its counts by reason in words.

Scan units write the `skipped` table next to their partial scan (one row per image: source id
relative to the source's root, reason, the decoder's message); the run summary, `atlas status`
and the site all read it back from the store, so the three always agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import pyarrow as pa

from atlas.core.schema import SKIPPED_SCHEMA, keyed_table
from atlas.data.source import SkippedInput
from atlas.store.store import Store

KIND = "skipped"
# Reasons as `atlas.data.source.decode_image` records them, in words; the order the summaries use.
REASONS = {
    "corrupt": "corrupt",
    "truncated": "truncated",
    "too_large": "too large",
    "tiny": "too small",
    "missing": "missing",
}


def skipped_table(skipped: Sequence[SkippedInput], unit_key: str) -> pa.Table:
    """The `skipped` table of one scan unit."""
    columns = {
        "source_id": [s.source_id for s in skipped],
        "reason": [s.reason for s in skipped],
        "message": [s.message for s in skipped],
    }
    return keyed_table(columns, SKIPPED_SCHEMA, unit_key)


def read_skipped(store: Store, keys: Iterable[str] | None = None) -> pa.Table:
    """Every skipped input the store records (only those of the scan units `keys`, if given)."""
    wanted = None if keys is None else set(keys)
    tables = [
        store.read_unit(entry.key, KIND)
        for entry in store.entries()
        if entry.status == "done" and KIND in entry.tables and (wanted is None or entry.key in wanted)
    ]
    if not tables:
        return SKIPPED_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by([("source_id", "ascending")])


def count_reasons(table: pa.Table) -> dict[str, int]:
    """Skipped inputs per reason, known reasons first in `REASONS` order."""
    counts = Counter(table.column("reason").to_pylist())
    order = [r for r in REASONS if r in counts] + sorted(r for r in counts if r not in REASONS)
    return {reason: counts[reason] for reason in order}


def describe(counts: dict[str, int]) -> str:
    """`5 inputs skipped (2 corrupt, 1 truncated, 1 too large, 1 too small)`; '' when none."""
    total = sum(counts.values())
    if not total:
        return ""
    parts = ", ".join(f"{n} {REASONS.get(reason, reason)}" for reason, n in counts.items())
    return f"{total} input{'s' if total != 1 else ''} skipped ({parts})"
