"""Reading a layer's pictures a unit at a time: each unit read when a walk first needs it and
dropped after the last step that does.

A unit covers a run of channels, so a walk over a layer's channels in order holds about one unit
per table kind: memory is bounded by a unit, not by the layer. The site's sprites and the quality
record's interpretability proxy both walk a layer this way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa

from atlas.store.store import Store


def layer_units(store: Store, kind: str, layer: str) -> list[str]:
    """Keys of the finished units that wrote a table of `kind` for `layer`, in commit order."""
    return [e.key for e in store.entries() if e.status == "done" and kind in e.tables and e.layer == layer]


class UnitWalk:
    """The units each step of a walk needs, read on demand and released after their last step.

    `steps[i]` lists the (table kind, unit key) pairs step i reads; `columns[kind]` is the one
    column of pictures read for that kind.
    """

    def __init__(self, store: Store, steps: Sequence[Iterable[tuple[str, str]]], columns: Mapping[str, str]):
        self.store = store
        self.columns = columns
        self._held: dict[tuple[str, str], pa.Table] = {}
        last: dict[tuple[str, str], int] = {}
        for step, units in enumerate(steps):
            last.update((unit, step) for unit in units)
        self._release: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for unit, step in last.items():
            self._release[step].append(unit)

    def picture(self, kind: str, key: str, row: int) -> bytes:
        """The bytes of one picture (row `row` of the unit's table of `kind`)."""
        unit = (kind, key)
        if unit not in self._held:
            self._held[unit] = self.store.read_unit(key, kind, [self.columns[kind]])
        return self._held[unit].column(0)[row].as_py()

    def done(self, step: int) -> None:
        """Step `step` is over: drop the units no later step needs."""
        for unit in self._release.pop(step, ()):
            self._held.pop(unit, None)
