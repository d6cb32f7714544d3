"""The registry of unit kinds: what each kind of unit is, registered beside its implementation.

A kind's module (under atlas/kinds/, or a plugin's) calls `register_kind` with its name, the
worker handler that computes one unit and, when units of the kind gain from running together,
`run_many`. The worker dispatch (atlas.run.worker) and the catalogue loop over this registry and
never name a kind. Nothing here imports torch or Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from atlas.core.registry import Registry

Tables = dict[str, pa.Table]
# (worker context, unit, the unit's work) -> the unit's tables by table kind
Handler = Callable[[Any, Any, Any], Tables]
# (worker context, units of one kind with equal work) -> each unit's tables, in order
ManyHandler = Callable[[Any, Sequence[Any]], list[Tables]]


@dataclass(frozen=True)
class UnitKind:
    """One kind of unit. `run_many`, when given, computes several units of equal work in one call
    (render chunks of a layer share physical batches), each getting what it would get alone."""

    name: str
    handler: Handler
    run_many: ManyHandler | None = None


UNIT_KINDS: Registry[UnitKind] = Registry("unit kind")


def register_kind(name: str, handler: Handler, run_many: ManyHandler | None = None) -> UnitKind:
    """Register unit kind `name` (a second registration of a name is an error)."""
    return UNIT_KINDS.register(name, UnitKind(name, handler, run_many))
