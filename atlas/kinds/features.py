"""Feature units: what an SAE feature writes back into the network, one unit per SAE layer.

Two things a feature dashboard shows that need no dataset, only the SAE's decoder and the model:

- **nearest features**: the features whose decoder directions have the highest cosine with the
  feature's own (`NEAREST` of them, itself excluded), over every feature of the SAE;
- **logit effects**: the classes the feature's decoder direction raises and lowers most when it
  is added to the layer's output at every position and the rest of the network runs. The layer's
  output is taken on a mid-grey image, and the direction is scaled to the mean length of that
  output's position vectors, so effects compare across features and layers.

The `features` table has one row per requested feature (docs/STORE.md); the channel view of an
SAE layer lists both, the neighbours linked to their own views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

from atlas.core.schema import FEATURES_SCHEMA, keyed_table
from atlas.kinds.context import UnitFailed, WorkerContext
from atlas.models import LoadedModel
from atlas.plan.kinds import PlanInputs, Speed, register_kind
from atlas.plan.layer_names import base_layer
from atlas.plan.spec import JobSpec
from atlas.plan.units import ModelFacts, Unit, layer_channels, make_unit
from atlas.plan.work import Work

NEAREST = 5  # decoder neighbours per feature
CLASSES = 5  # classes raised and lowered per feature
BLOCK = 1024  # features per block of the cosine matrix: memory is BLOCK x K floats


@dataclass(frozen=True)
class FeaturesWork(Work):
    """Decoder neighbours and logit effects of an SAE layer's requested features."""

    kind: ClassVar[str] = "features"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    nearest: int
    classes: int


def nearest_features(decoder: torch.Tensor, features: list[int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of `features`: the `count` other rows of `decoder` (K, C) of highest cosine, and
    those cosines, computed a block of rows at a time."""
    unit = decoder.float() / decoder.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    count = min(count, len(unit) - 1)
    picked, cosines = [], []
    for start in range(0, len(features), BLOCK):
        rows = torch.tensor(features[start : start + BLOCK])
        similar = unit[rows] @ unit.T  # (b, K)
        similar[torch.arange(len(rows)), rows] = -torch.inf  # never a feature's own neighbour
        top = similar.topk(count, dim=1)
        picked.append(top.indices.numpy())
        cosines.append(top.values.numpy())
    return np.concatenate(picked), np.concatenate(cosines)


@torch.no_grad()
def logit_effects(model: LoadedModel, layer: str, decoder: torch.Tensor, features: list[int]) -> np.ndarray:
    """(len(features), classes): each logit with the feature's decoder direction added to `layer`'s
    output at every position of a mid-grey image, minus without it."""
    name = model.resolve_layer(layer)
    size = model.input_size
    grey = torch.full((1, 3, size, size), 0.5, device=model.device)
    base = model.activations(grey, [name])[name]  # (1, C, H, W)
    scale = float(base.flatten(2).norm(dim=1).mean()) or 1.0
    module = dict(model.module.named_modules())[name]
    effects = []
    for start in range(0, len(features), 64):
        rows = decoder[features[start : start + 64]].float().to(model.device)
        rows = scale * rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
        shift = torch.cat([torch.zeros_like(rows[:1]), rows])  # the first element: no change
        if name in model.folded.affine:  # the module outputs the folded map: a change scales with it
            shift = shift * model.folded.affine[name][0].reshape(1, -1)

        def add(
            _module: torch.nn.Module, _inputs: object, out: torch.Tensor, shift: torch.Tensor = shift
        ) -> torch.Tensor:
            view = [len(shift), shift.shape[1]] + [1] * (out.ndim - 2)
            if out.ndim == 3:  # tokens (B, N, C): the feature dimension is last
                return out + shift[:, None, :].to(out)
            return out + shift.view(view).to(out)

        handle = module.register_forward_hook(add)
        try:
            logits = model.module(model.normalize(grey.expand(len(shift), -1, -1, -1))).float()
        finally:
            handle.remove()
        effects.append((logits[1:] - logits[:1]).cpu().numpy())
    return np.concatenate(effects)


def _features(ctx: WorkerContext, unit: Unit, work: FeaturesWork) -> dict[str, pa.Table]:
    encoder = ctx.model.derived(unit.layer)
    decoder = getattr(encoder, "w_dec", None)
    if decoder is None:
        raise UnitFailed(
            f"layer {unit.layer!r} is not an SAE layer of this model; features need an SAE's decoder"
        )
    features = list(unit.channels)
    near, cosine = nearest_features(decoder.cpu(), features, work.nearest)
    effects = logit_effects(ctx.model, base_layer(unit.layer), decoder, features)
    order = np.argsort(-effects, axis=1)
    classes = min(work.classes, effects.shape[1])
    raised, lowered = order[:, :classes], order[:, ::-1][:, :classes]
    columns = {
        "layer": [unit.layer] * len(features),
        "channel": features,
        "nearest": near.tolist(),
        "nearest_cosine": cosine.tolist(),
        "raises": raised.tolist(),
        "raises_by": np.take_along_axis(effects, raised, 1).tolist(),
        "lowers": lowered.tolist(),
        "lowers_by": np.take_along_axis(effects, lowered, 1).tolist(),
    }
    return {"features": keyed_table(columns, FEATURES_SCHEMA, unit.key)}


def features_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    """One unit per SAE layer of the spec, for its requested features."""
    work = FeaturesWork(NEAREST, CLASSES)
    return [
        make_unit(facts.digest, layer.name, layer_channels(layer, facts), work)
        for layer in spec.layers
        if layer.sae is not None
    ]


def _cost(unit: Unit, spec: JobSpec, speed: Speed) -> float:
    """About one forward pass per feature (the logit effects), at scan speed."""
    return len(unit.channels) / speed.scan_images_per_s


register_kind(
    FeaturesWork, phase="first", planner=features_units, handler=_features, cost=_cost, tables=("features",)
)
