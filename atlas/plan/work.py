"""What a unit computes from: each unit kind's settings are a frozen dataclass deriving `Work`,
defined beside the kind's implementation (atlas/kinds/) and registered with it (atlas.plan.kinds).

A unit's settings type its handler (atlas.run.worker) and their serialized form (`key_settings`)
feeds its content key (atlas.plan.units). Only what changes a unit's result belongs there;
scheduling (how many channels per unit, whether a section is enabled) stays in the spec.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar

from atlas.plan.spec import RenderSpec

# RenderSpec fields that schedule the work but do not change the pictures.
_RENDER_SCHEDULING = ("enabled", "channels_per_unit")


def render_key_settings(render: RenderSpec) -> dict[str, Any]:
    settings = asdict(render)
    for name in _RENDER_SCHEDULING:
        settings.pop(name)
    return settings


class Work:
    """A unit kind's settings. `kind` names it; `version` is the code version of what computes it,
    part of every content key: bump it when a unit's result changes for the same inputs, and every
    unit of the kind is recomputed."""

    kind: ClassVar[str]
    version: ClassVar[str]

    def key_settings(self) -> dict[str, Any]:
        """The serialized form that feeds the content key: every field, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
