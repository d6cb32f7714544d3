"""Planning: a job spec becomes work units, each with a content key.

The key hashes everything that decides a unit's result (the model's weight digest, the layer,
the channels, the settings and the code version of the part that computes it), so a unit whose
key is already in the store is finished: that is how resume and nightly rebuilds skip work and
how a changed setting or checkpoint recomputes exactly the units it affects. Planning is pure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from atlas.plan.kinds import KindError, Phase, PlanInputs, kinds_of
from atlas.plan.spec import JobSpec, RenderSpec
from atlas.plan.work import Work


@dataclass(frozen=True)
class Unit:
    """One piece of work: its settings' kind decides the handler, its key names its result in the store."""

    layer: str  # "*" for scan units, which read every layer in one pass
    channels: tuple[int, ...]
    key: str
    work: Work
    inputs: Any = field(default=None, compare=False, hash=False)  # not part of the key
    # Weights to run on instead of the job's (a timeline's checkpoint); its digest is in the key.
    checkpoint: str | None = field(default=None, compare=False, hash=False)

    @property
    def kind(self) -> str:  # a registered unit kind (atlas.plan.kinds)
        return self.work.kind

    @property
    def label(self) -> str:
        chans = f" {channel_runs(self.channels)}" if self.channels else ""
        return f"{self.kind} {self.layer}{chans}"


def channel_runs(channels: Sequence[int]) -> str:
    """Channels as runs, the real ones: `0..7` for 0-7, `0,3,7` for [0, 3, 7], `0..2,5`."""
    runs: list[list[int]] = []
    for channel in channels:
        if runs and channel == runs[-1][-1] + 1:
            runs[-1].append(channel)
        else:
            runs.append([channel])
    return ",".join(f"{run[0]}..{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs to know about the model, without the model itself."""

    digest: str
    channels: Mapping[str, int]  # layer -> channel count
    tokens: frozenset[str] = frozenset()  # the layers whose outputs are tokens (ViTs)


# What renders token layers best where the spec does not say (BENCHMARKS.md, "Vision
# transformers": MACO with the light `vit` transforms reaches 1.44 where the CNN defaults stall).
TOKEN_RENDER = {"param": "maco", "transforms": "vit"}


def render_for(spec: JobSpec, facts: ModelFacts, layer: str) -> RenderSpec:
    """The render settings of one layer: the spec's, with the defaults of the layer's layout for
    the settings the spec did not write (token layers: TOKEN_RENDER; maps keep the CNN defaults)."""
    if layer not in facts.tokens:
        return spec.render
    unwritten = {k: v for k, v in TOKEN_RENDER.items() if f"render.{k}" not in spec.written}
    return replace(spec.render, **unwritten)


@dataclass(frozen=True)
class Plan:
    units: tuple[Unit, ...]  # the first phase's units (atlas.plan.kinds)

    def by_kind(self, kind: str) -> tuple[Unit, ...]:
        return tuple(unit for unit in self.units if unit.kind == kind)

    def keys(self) -> dict[str, tuple[str, ...]]:
        """The units' keys by kind."""
        keys: dict[str, list[str]] = {}
        for unit in self.units:
            keys.setdefault(unit.kind, []).append(unit.key)
        return {kind: tuple(found) for kind, found in keys.items()}


def content_key(digest: str, layer: str, channels: Sequence[int], work: Work) -> str:
    payload = json.dumps(
        {
            "kind": work.kind,
            "version": work.version,
            "model": digest,
            "layer": layer,
            "channels": list(channels),
            "settings": work.key_settings(),
        },
        sort_keys=True,
        default=str,
    )
    return f"{work.kind}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def make_unit(digest: str, layer: str, channels: Sequence[int], work: Work, inputs: Any = None) -> Unit:
    """A unit with its content key."""
    channels = tuple(channels)
    return Unit(layer, channels, content_key(digest, layer, channels, work), work, inputs)


def chunks(items: Sequence[int], size: int) -> list[tuple[int, ...]]:
    """`items` in runs of at most `size` (a layer's channels, per unit)."""
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def layer_channels(spec_layer: Any, facts: ModelFacts) -> tuple[int, ...]:
    """The channels of a `[[layers]]` entry: the ones it names, or all of the layer's."""
    return tuple(spec_layer.channels or range(facts.channels[spec_layer.name]))


def plan_phase(
    phase: Phase, spec: JobSpec, facts: ModelFacts, inputs: PlanInputs | None = None
) -> list[Unit]:
    """Every unit the registered kinds of `phase` plan, kind by kind in registration order."""
    kinds = kinds_of(phase)
    if not kinds and phase == "first":
        raise KindError(
            "no unit kinds are registered: import atlas.kinds (the built-in kinds) before planning"
        )
    inputs = inputs or PlanInputs()
    return [unit for kind in kinds for unit in kind.planner(spec, facts, inputs)]


def make_plan(
    spec: JobSpec, facts: ModelFacts, shards: Sequence[Any] = (), fingerprints: Sequence[str] = ()
) -> Plan:
    """Every unit of the job's first phase. The next phases' units are planned once the units they
    read are done (`plan_phase`)."""
    return Plan(units=tuple(plan_phase("first", spec, facts, PlanInputs(shards, fingerprints))))
