"""What changed since the previous build, from a small summary kept next to the site.

Each build writes `build.json`: the build date, the model digest and, per layer, the content
keys of the finished units with their channels. Keys change exactly when a unit is recomputed
(new weights, new settings, new renderer), so comparing two summaries tells which layers and
channels the nightly run actually redid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from atlas.store.store import UnitRecord

SUMMARY_VERSION = 1


@dataclass(frozen=True)
class LayerChange:
    layer: str
    status: str  # "added", "removed" or "changed"
    channels: tuple[int, ...]  # channels covered by units that are new in this build
    units_added: int
    units_removed: int


@dataclass(frozen=True)
class BuildChanges:
    previous_date: str | None  # None: there was no earlier build to compare with
    model_changed: bool
    layers: tuple[LayerChange, ...]

    @property
    def nothing(self) -> bool:
        return self.previous_date is not None and not self.model_changed and not self.layers


def build_summary(
    entries: Iterable[UnitRecord], model_digest: str, built: str, sprites: dict | None = None
) -> dict:
    """The summary this build leaves behind for the next one to compare against.

    `sprites` maps a layer to its slug and per-channel sprite keys, so the next build can
    link the sprites that did not change instead of composing them again.
    """
    layers: dict[str, dict[str, list[int]]] = {}
    for entry in entries:
        if entry.status == "done":
            layers.setdefault(entry.layer, {})[entry.key] = sorted(entry.channels)
    return {
        "version": SUMMARY_VERSION,
        "built": built,
        "model_digest": model_digest,
        "layers": layers,
        "sprites": sprites or {},
    }


def load_summary(path: Path) -> dict | None:
    """The previous build's summary; None when absent, unreadable or of another version."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("version") != SUMMARY_VERSION:
        return None
    return summary


def diff_builds(previous: dict | None, current: dict) -> BuildChanges:
    """Layers added, removed or recomputed between two summaries, with the channels affected."""
    if previous is None:
        return BuildChanges(None, False, ())
    old_layers, new_layers = previous.get("layers", {}), current["layers"]
    changes = []
    for layer, units in new_layers.items():
        old_units = old_layers.get(layer)
        if old_units is None:
            changes.append(LayerChange(layer, "added", _channels(units.values()), len(units), 0))
            continue
        added = [channels for key, channels in units.items() if key not in old_units]
        removed = [key for key in old_units if key not in units]
        if added or removed:
            changes.append(LayerChange(layer, "changed", _channels(added), len(added), len(removed)))
    for layer, old_units in old_layers.items():
        if layer not in new_layers:
            changes.append(LayerChange(layer, "removed", (), 0, len(old_units)))
    return BuildChanges(
        previous_date=str(previous.get("built", "")),
        model_changed=previous.get("model_digest") != current["model_digest"],
        layers=tuple(changes),
    )


def _channels(groups: Iterable[Iterable[int]]) -> tuple[int, ...]:
    return tuple(sorted({c for group in groups for c in group}))


def channel_ranges(channels: Iterable[int]) -> str:
    """Compact text for a set of channels: `0–7, 12, 16–31`."""
    ordered = sorted(set(channels))
    parts: list[str] = []
    start = previous = None
    for channel in ordered + [None]:
        if start is not None and channel is not None and channel == previous + 1:
            previous = channel
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}–{previous}")
        start = previous = channel
    return ", ".join(parts)
