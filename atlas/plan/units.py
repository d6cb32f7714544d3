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
from dataclasses import dataclass, field
from typing import Any

from atlas.plan.spec import JobSpec
from atlas.plan.work import DirectionsWork, ExamplesWork, PairWork, RenderWork, ScanWork, UnitWork

# Bump when a part's output changes for the same inputs: every unit of that kind is recomputed.
CODE_VERSIONS = {"render": "3", "directions": "3", "pair": "3", "scan": "1", "examples": "1", "probe": "1"}
CODE_VERSIONS.update(
    {"atlas_layout": "1", "atlas_grid": "1", "icons": "2", "atlas_images": "1", "atlas_places": "1"}
)  # atlas.kinds.actatlas.stage

# Channels per examples unit: bounds the size of one result (crops and thumbnails are PNG bytes).
EXAMPLES_CHANNELS_PER_UNIT = 64


@dataclass(frozen=True)
class Unit:
    """One piece of work: its settings' kind decides the handler, its key names its result in the store."""

    layer: str  # "*" for scan units, which read every layer in one pass
    channels: tuple[int, ...]
    key: str
    work: UnitWork
    inputs: Any = field(default=None, compare=False, hash=False)  # not part of the key
    # Weights to run on instead of the job's (a timeline's checkpoint); its digest is in the key.
    checkpoint: str | None = field(default=None, compare=False, hash=False)

    @property
    def kind(self) -> str:  # render | directions | pair | scan | examples
        return self.work.kind

    @property
    def label(self) -> str:
        chans = f" {self.channels[0]}..{self.channels[-1]}" if self.channels else ""
        return f"{self.kind} {self.layer}{chans}"


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs to know about the model, without the model itself."""

    digest: str
    channels: Mapping[str, int]  # layer -> channel count


@dataclass(frozen=True)
class Plan:
    units: tuple[Unit, ...]  # independent units, run first
    scan_keys: tuple[str, ...]  # the scan units whose partials merge into the examples units


def content_key(digest: str, layer: str, channels: Sequence[int], work: UnitWork) -> str:
    payload = json.dumps(
        {
            "kind": work.kind,
            "version": CODE_VERSIONS[work.kind],
            "model": digest,
            "layer": layer,
            "channels": list(channels),
            "settings": work.key_settings(),
        },
        sort_keys=True,
        default=str,
    )
    return f"{work.kind}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def make_unit(digest: str, layer: str, channels: Sequence[int], work: UnitWork, inputs: Any = None) -> Unit:
    """A unit with its content key."""
    channels = tuple(channels)
    return Unit(layer, channels, content_key(digest, layer, channels, work), work, inputs)


def _chunks(items: Sequence[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def render_units(spec: JobSpec, facts: ModelFacts) -> list[Unit]:
    if not spec.render.enabled:
        return []
    work = RenderWork(spec.render)
    units = []
    for layer in spec.layers:
        channels = layer.channels or tuple(range(facts.channels[layer.name]))
        for chunk in _chunks(channels, spec.render.channels_per_unit):
            units.append(make_unit(facts.digest, layer.name, chunk, work))
    return units


def interaction_units(spec: JobSpec, facts: ModelFacts) -> list[Unit]:
    inter = spec.interactions
    units = []
    if inter.random_directions:
        work = DirectionsWork(spec.render, inter.random_directions)
        units += [make_unit(facts.digest, layer.name, (), work) for layer in spec.layers]
    pair = PairWork(spec.render, inter.interpolation_steps)
    units += [make_unit(facts.digest, layer, (a, b), pair) for layer, a, b in inter.pairs]
    return units


def scan_units(
    spec: JobSpec, facts: ModelFacts, shards: Sequence[Any], fingerprints: Sequence[str]
) -> list[Unit]:
    """One unit per dataset shard; each reads every requested layer in a single forward pass."""
    if not spec.examples.enabled:
        return []
    ex = spec.examples
    units = []
    for shard, fingerprint in zip(shards, fingerprints, strict=True):
        work = ScanWork(
            layers=tuple(layer.name for layer in spec.layers),
            k=ex.k,
            batch_size=ex.batch_size,
            directions=spec.interactions.random_directions,
            seed=spec.render.seed,
            data=fingerprint,
            vectors=spec.activation_atlas.layers,
            vector_samples=spec.activation_atlas.samples if spec.activation_atlas.layers else 0,
        )
        units.append(make_unit(facts.digest, "*", (), work, inputs=shard))
    return units


def examples_units(spec: JobSpec, facts: ModelFacts, scan_keys: Sequence[str]) -> list[Unit]:
    """Per chunk of a layer's channels: crop the chosen examples from the merged scans.

    The driver attaches the merged partial scan of the unit's layer as `inputs`. The first chunk
    of a layer also crops the examples of the layer's random directions.
    """
    if not spec.examples.enabled or not scan_keys:
        return []
    ex = spec.examples
    directions = spec.interactions.random_directions
    units = []
    for layer in spec.layers:
        channels = layer.channels or tuple(range(facts.channels[layer.name]))
        for index, chunk in enumerate(_chunks(channels, EXAMPLES_CHANNELS_PER_UNIT)):
            work = ExamplesWork(
                scans=tuple(sorted(scan_keys)),
                crop_size=ex.crop_size,
                thumb_size=ex.thumb_size,
                bins=ex.bins,
                quantiles=tuple(ex.quantiles),
                directions=directions,
                with_directions=index == 0 and bool(directions),
            )
            units.append(make_unit(facts.digest, layer.name, chunk, work))
    return units


def make_plan(
    spec: JobSpec, facts: ModelFacts, shards: Sequence[Any] = (), fingerprints: Sequence[str] = ()
) -> Plan:
    """Every unit of the job. Examples units come later, once the scans they merge are done."""
    scans = scan_units(spec, facts, shards, fingerprints)
    units = render_units(spec, facts) + interaction_units(spec, facts) + scans
    return Plan(units=tuple(units), scan_keys=tuple(u.key for u in scans))
