"""What each kind of unit computes from: one frozen dataclass per unit kind.

A unit's settings type its handler (atlas.run.worker) and their serialized form (`key_settings`)
feeds its content key (atlas.plan.units). Only what changes a unit's result belongs here; scheduling
(how many channels per unit, whether a section is enabled) stays in the spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from atlas.plan.spec import RenderSpec

# RenderSpec fields that schedule the work but do not change the pictures.
_RENDER_SCHEDULING = ("enabled", "channels_per_unit")


def _render_key_settings(render: RenderSpec) -> dict[str, Any]:
    settings = asdict(render)
    for name in _RENDER_SCHEDULING:
        settings.pop(name)
    return settings


class _Work:
    kind: ClassVar[str]

    def key_settings(self) -> dict[str, Any]:
        """The serialized form that feeds the content key: every field, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class RenderWork(_Work):
    """Optimize each channel of the unit with every objective of the render settings."""

    kind: ClassVar[str] = "render"
    render: RenderSpec

    def key_settings(self) -> dict[str, Any]:
        return _render_key_settings(self.render)


@dataclass(frozen=True)
class DirectionsWork(_Work):
    """Optimize `directions` random directions in the layer's activation space."""

    kind: ClassVar[str] = "directions"
    render: RenderSpec
    directions: int

    def key_settings(self) -> dict[str, Any]:
        return {**_render_key_settings(self.render), "directions": self.directions}


@dataclass(frozen=True)
class PairWork(_Work):
    """Optimize two channels jointly, and the interpolation between them."""

    kind: ClassVar[str] = "pair"
    render: RenderSpec
    interpolation_steps: int

    def key_settings(self) -> dict[str, Any]:
        return {**_render_key_settings(self.render), "interpolation_steps": self.interpolation_steps}


@dataclass(frozen=True)
class ScanWork(_Work):
    """Scan one dataset shard: per-channel top/bottom k and histograms of every layer at once.

    `data` fingerprints the shard (and the whole data set, since top-k are global).
    """

    kind: ClassVar[str] = "scan"
    layers: tuple[str, ...]
    k: int
    batch_size: int
    directions: int  # random directions per layer, scanned like channels
    seed: int  # draws the random directions, as the renderer does
    data: str
    vectors: tuple[str, ...] = ()  # layers whose activation vectors are sampled for an activation atlas
    vector_samples: int = 0  # the bound on that sample (atlas.kinds.actatlas.collect)

    def key_settings(self) -> dict[str, Any]:
        """Without an activation atlas the key stays what it was before atlases existed."""
        settings = super().key_settings()
        if not self.vectors:
            del settings["vectors"], settings["vector_samples"]
        return settings


@dataclass(frozen=True)
class ExamplesWork(_Work):
    """Crop the chosen examples of a chunk of a layer's channels from the merged scans."""

    kind: ClassVar[str] = "examples"
    scans: tuple[str, ...]  # the scan units merged, sorted
    crop_size: int
    thumb_size: int
    bins: int
    quantiles: tuple[float, float]
    directions: int
    with_directions: bool  # also crop the layer's random directions (the layer's first chunk)


@dataclass(frozen=True)
class ProbeWork(_Work):
    """A checkpoint's activation statistics and signatures on the timeline's probe set (atlas.kinds.timeline)."""

    kind: ClassVar[str] = "probe"
    layers: tuple[str, ...]
    positions: int  # sampled positions per probe image in each signature
    seed: int
    data: str  # fingerprint of the probe images


UnitWork = RenderWork | DirectionsWork | PairWork | ScanWork | ExamplesWork | ProbeWork
