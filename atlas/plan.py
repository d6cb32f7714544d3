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
from dataclasses import asdict, dataclass, field
from typing import Any

from atlas.spec import JobSpec

# Bump when a part's output changes for the same inputs: every unit of that kind is recomputed.
CODE_VERSIONS = {"render": "2", "directions": "2", "pair": "2", "scan": "1", "examples": "1"}

# Channels per examples unit: bounds the size of one result (crops and thumbnails are PNG bytes).
EXAMPLES_CHANNELS_PER_UNIT = 64

# Render settings that do not change the pictures stay out of the keys.
_RENDER_KEYS_IGNORED = ("enabled", "channels_per_unit")


@dataclass(frozen=True)
class Unit:
    """One piece of work: its kind decides the handler, its key names its result in the store."""

    kind: str  # render | directions | pair | scan | examples
    layer: str  # "*" for scan units, which read every layer in one pass
    channels: tuple[int, ...]
    key: str
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)
    inputs: Any = field(default=None, compare=False, hash=False)  # not part of the key

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


def content_key(
    kind: str, digest: str, layer: str, channels: Sequence[int], settings: Mapping[str, Any]
) -> str:
    payload = json.dumps(
        {
            "kind": kind,
            "version": CODE_VERSIONS[kind],
            "model": digest,
            "layer": layer,
            "channels": list(channels),
            "settings": settings,
        },
        sort_keys=True,
        default=str,
    )
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def _render_settings(spec: JobSpec) -> dict[str, Any]:
    settings = asdict(spec.render)
    for name in _RENDER_KEYS_IGNORED:
        settings.pop(name)
    return settings


def _chunks(items: Sequence[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def render_units(spec: JobSpec, facts: ModelFacts) -> list[Unit]:
    if not spec.render.enabled:
        return []
    settings = _render_settings(spec)
    units = []
    for layer in spec.layers:
        channels = layer.channels or tuple(range(facts.channels[layer.name]))
        for chunk in _chunks(channels, spec.render.channels_per_unit):
            key = content_key("render", facts.digest, layer.name, chunk, settings)
            units.append(Unit("render", layer.name, chunk, key, settings))
    return units


def interaction_units(spec: JobSpec, facts: ModelFacts) -> list[Unit]:
    inter = spec.interactions
    render = _render_settings(spec)
    units = []
    if inter.random_directions:
        settings = {**render, "directions": inter.random_directions}
        for layer in spec.layers:
            key = content_key("directions", facts.digest, layer.name, (), settings)
            units.append(Unit("directions", layer.name, (), key, settings))
    for layer, a, b in inter.pairs:
        settings = {**render, "interpolation_steps": inter.interpolation_steps}
        key = content_key("pair", facts.digest, layer, (a, b), settings)
        units.append(Unit("pair", layer, (a, b), key, settings))
    return units


def scan_units(
    spec: JobSpec, facts: ModelFacts, shards: Sequence[Any], fingerprints: Sequence[str]
) -> list[Unit]:
    """One unit per dataset shard; each reads every requested layer in a single forward pass."""
    if not spec.examples.enabled:
        return []
    ex = spec.examples
    settings = {
        "layers": [layer.name for layer in spec.layers],
        "k": ex.k,
        "batch_size": ex.batch_size,
        "directions": spec.interactions.random_directions,
        "seed": spec.render.seed,
    }
    units = []
    for shard, fingerprint in zip(shards, fingerprints, strict=True):
        key = content_key("scan", facts.digest, "*", (), {**settings, "data": fingerprint})
        units.append(Unit("scan", "*", (), key, settings, inputs=shard))
    return units


def examples_units(spec: JobSpec, facts: ModelFacts, scan_keys: Sequence[str]) -> list[Unit]:
    """Per chunk of a layer's channels: crop the chosen examples from the merged scans.

    The driver attaches the merged partial scan of the unit's layer as `inputs`. The first chunk
    of a layer also crops the examples of the layer's random directions.
    """
    if not spec.examples.enabled or not scan_keys:
        return []
    ex = spec.examples
    base = {
        "scans": sorted(scan_keys),
        "crop_size": ex.crop_size,
        "thumb_size": ex.thumb_size,
        "bins": ex.bins,
        "quantiles": list(ex.quantiles),
        "directions": spec.interactions.random_directions,
    }
    units = []
    for layer in spec.layers:
        channels = layer.channels or tuple(range(facts.channels[layer.name]))
        for index, chunk in enumerate(_chunks(channels, EXAMPLES_CHANNELS_PER_UNIT)):
            settings = {**base, "with_directions": index == 0 and bool(base["directions"])}
            key = content_key("examples", facts.digest, layer.name, chunk, settings)
            units.append(Unit("examples", layer.name, chunk, key, settings))
    return units


def make_plan(
    spec: JobSpec, facts: ModelFacts, shards: Sequence[Any] = (), fingerprints: Sequence[str] = ()
) -> Plan:
    """Every unit of the job. Examples units come later, once the scans they merge are done."""
    scans = scan_units(spec, facts, shards, fingerprints)
    units = render_units(spec, facts) + interaction_units(spec, facts) + scans
    return Plan(units=tuple(units), scan_keys=tuple(u.key for u in scans))
