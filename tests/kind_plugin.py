"""A unit kind from outside the package: each layer's mean activation per channel on noise images.

Installed as a plugin (tests/test_unit_kind_plugin.py), it registers everything a kind has, from
this module alone: its work type (kind name and code version), phase and planner, the worker
handler, its cost model, its table and its view on the layer page.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from atlas.core.schema import keyed_table
from atlas.plan.kinds import PlanInputs, register_kind
from atlas.plan.units import ModelFacts, Unit, layer_channels, make_unit
from atlas.plan.work import Work
from atlas.site.views import register_view
from atlas.store.store import Store

KIND = "noise_mean"
TABLE = "noise_mean"
SCHEMA = pa.schema(
    [("unit_key", pa.string()), ("layer", pa.string()), ("channel", pa.int32()), ("mean", pa.float32())]
)
IMAGES = 3


@dataclass(frozen=True)
class NoiseMeanWork(Work):
    kind: ClassVar[str] = KIND
    version: ClassVar[str] = "1"
    images: int
    seed: int


def plan(spec: Any, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    work = NoiseMeanWork(IMAGES, spec.render.seed)
    return [make_unit(facts.digest, layer.name, layer_channels(layer, facts), work) for layer in spec.layers]


def compute(ctx: Any, unit: Unit, work: NoiseMeanWork) -> dict[str, pa.Table]:
    import torch

    side = ctx.model.input_size
    noise = torch.rand(work.images, 3, side, side, generator=torch.Generator().manual_seed(work.seed))
    with torch.no_grad():
        maps = ctx.model.activations(noise.to(ctx.model.device), [unit.layer])[unit.layer]
    means = maps.mean(dim=(0, 2, 3)).cpu()
    columns = {
        "layer": [unit.layer] * len(unit.channels),
        "channel": list(unit.channels),
        "mean": [float(means[c]) for c in unit.channels],
    }
    return {TABLE: keyed_table(columns, SCHEMA, unit.key)}


def cost(unit: Unit, spec: Any, speed: Any) -> float:
    return unit.work.images / speed.scan_images_per_s  # a forward pass per image


def section(store: Store, layer: str, keys: Sequence[str]) -> str:
    rows = pa.concat_tables([store.read_unit(key, TABLE) for key in keys]).to_pylist()
    cells = "".join(f"<tr><td>{r['channel']}</td><td>{r['mean']:.4f}</td></tr>" for r in rows)
    return f'<table class="noise-mean" data-layer="{html.escape(layer)}">{cells}</table>'


register_kind(NoiseMeanWork, phase="first", planner=plan, handler=compute, cost=cost, tables=(TABLE,))
register_view(KIND, "Mean activation on noise", section)
