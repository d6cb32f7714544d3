"""Why units are to be computed: what `atlas plan` and `atlas status` print beside their counts.

A unit is recomputed when its content key is not in the store. The key hashes the model's weights,
the layer and channels, the settings of the spec sections its kind reads (atlas.plan.kinds) and
the kind's code version, so the reason is found by comparing the job as it is now with the job the
store last recorded (job.json) and with the units it holds: the weights changed, a setting
changed from what to what, a layer or channels are new, the dataset changed, the code version (or
another input) changed, or the unit was never computed (or failed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from atlas.plan.kinds import UNIT_KINDS
from atlas.plan.spec import spec_to_dict
from atlas.plan.units import Unit
from atlas.run.phases import Prepared
from atlas.store.store import Store


def _changes(before: dict[str, Any], now: dict[str, Any], section: str) -> list[str]:
    old, new = before.get(section) or {}, now.get(section) or {}
    return [
        f"{section}.{key} {_short(old.get(key))} -> {_short(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _short(value: Any) -> str:
    text = "unset" if value is None else str(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def reasons(prepared: Prepared, store: Store, pending: Sequence[Unit]) -> list[tuple[str, int]]:
    """The pending units grouped by why they are to be computed, largest group first: (reason,
    count), the counts adding up to the number of pending units."""
    job = store.job()
    if not job:
        return [("first run: nothing is stored yet", len(pending))] if pending else []
    before, now = job.get("spec") or {}, spec_to_dict(prepared.spec)
    recorded = {layer.get("name"): set(layer.get("channels") or ()) for layer in job.get("layers") or []}
    entries = store.entries()
    stored = {(e.kind, e.layer, tuple(e.channels)) for e in entries}
    failed = {e.key for e in entries if e.status == "failed"}
    digest = job.get("model_digest")
    found: Counter[str] = Counter()
    for unit in pending:
        found[_reason(unit, prepared, before, now, recorded, stored, failed, digest)] += 1
    return found.most_common()


def _reason(
    unit: Unit,
    prepared: Prepared,
    before: dict[str, Any],
    now: dict[str, Any],
    recorded: dict[str, set[int]],
    stored: set[tuple[str, str, tuple[int, ...]]],
    failed: set[str],
    digest: str | None,
) -> str:
    if unit.key in failed:
        return "failed last time: retried"
    if digest and digest != prepared.facts.digest:
        return f"the model's weights changed (digest {digest} -> {prepared.facts.digest})"
    if unit.layer != "*" and unit.layer not in recorded:
        return f"new layer {unit.layer}"
    if any(c not in recorded.get(unit.layer, set(unit.channels)) for c in unit.channels):
        return f"new channels of {unit.layer} (not in the last run)"
    kind = UNIT_KINDS.get(unit.kind)
    changed = [change for section in kind.reads for change in _changes(before, now, section)]
    if changed:
        return ", ".join(changed)
    if (unit.kind, unit.layer, unit.channels) in stored:
        return f"the {unit.kind} code version or the data it reads changed"
    return "not computed yet"
