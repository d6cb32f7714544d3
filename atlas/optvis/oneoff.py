"""One-off renders for research use (`atlas render`): any objective, parameterization and descent.

Unlike the atlas recipes this renders a single objective, possibly over several images (a
diversity set), and writes them side by side into one PNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.models import LOGITS, LoadedModel
from atlas.optvis import objectives as obj
from atlas.optvis.named import OBJECTIVES
from atlas.optvis.param import make_param
from atlas.optvis.recipes import to_uint8
from atlas.optvis.render import STEEPEST_DESCENT, RenderError, RenderResult, render

DESCENTS = ("adam", *STEEPEST_DESCENT)
PENALTIES = {"l1": obj.l1, "tv": obj.total_variation, "blur": obj.blur}


@dataclass(frozen=True)
class OneOffRequest:
    """Everything `atlas render` can choose; defaults are the atlas defaults."""

    layer: str
    channel: int = 0
    objective: str = "channel"
    count: int = 1
    param: str = "fourier"
    decorrelate: bool = True
    decay_power: float = 1.0
    descent: str = "adam"
    steps: int = 256
    size: int = 128
    lr: float = 0.05
    transforms: str = "wider"
    diversity_weight: float = 5.0
    penalties: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    precision: str = "fp32"
    lr_schedule: str = "warmup-hold-cosine"
    coarse_fraction: float = 0.2


def build_objective(request: OneOffRequest) -> obj.Objective:
    """The objective a request names, plus its weighted penalties."""
    kind = OBJECTIVES.get(request.objective)
    objective = kind.term(request.layer, request.channel, None)
    if kind.diverse:
        objective = objective + request.diversity_weight * obj.diversity(request.layer)
    return with_penalties(objective, request.penalties)


def with_penalties(objective: obj.Objective, penalties: dict[str, float]) -> obj.Objective:
    """The objective minus each named penalty (l1, tv, blur) times its weight."""
    for name, weight in penalties.items():
        if name not in PENALTIES:
            raise RenderError(f"unknown penalty {name!r}; use some of {', '.join(PENALTIES)}")
        objective = objective - weight * PENALTIES[name]()
    return objective


def render_one_off(
    model: LoadedModel, request: OneOffRequest, objective: obj.Objective | None = None
) -> RenderResult:
    """Render ``request.count`` images of one objective in one batch.

    ``objective`` replaces the one the request names (layer, channel, objective); the request's
    penalties still apply, and every other setting comes from the request.
    """
    if request.descent not in DESCENTS:
        raise RenderError(f"unknown descent {request.descent!r}; use one of {', '.join(DESCENTS)}")
    if objective is None and OBJECTIVES.get(request.objective).diverse and request.count < 2:
        raise RenderError(f"a {request.objective} render needs at least 2 images (--count)")
    kind, decorrelate, optimizer = request.param, request.decorrelate, "adam"
    if request.descent != "adam":
        kind, decorrelate, optimizer = STEEPEST_DESCENT[request.descent]
    param = make_param(
        kind,
        request.count,
        request.size,
        seed=request.seed,
        decay_power=request.decay_power,
        decorrelate=decorrelate,
    )
    return render(
        model,
        build_objective(request) if objective is None else with_penalties(objective, request.penalties),
        param,
        steps=request.steps,
        lr=request.lr,
        transforms=request.transforms,
        optimizer=optimizer,
        seed=request.seed,
        precision=request.precision,
        lr_schedule=request.lr_schedule,
        coarse_fraction=request.coarse_fraction,
    )


def render_target(
    model: LoadedModel, request: OneOffRequest, target: obj.Objective
) -> tuple[RenderResult, list[float]]:
    """Render ``target`` (an objective built from text or code) with the request's settings, and
    what each image reached: the target's own value, penalties left out."""
    result = render_one_off(model, request, target)
    with torch.no_grad():
        values = target(obj.StepState(result.activations, result.images))
    return result, values.tolist()


def read_out(result: RenderResult, request: OneOffRequest) -> list[float]:
    """What each image reached: the channel's mean activation, or the class logit."""
    readout = OBJECTIVES.get(request.objective).readout
    if readout == "logits":
        return result.activations[LOGITS][:, request.channel].tolist()
    if readout == "layer":
        return result.activations[request.layer].pow(2).mean(dim=(1, 2, 3)).tolist()
    return result.activations[request.layer][:, request.channel].mean(dim=(1, 2)).tolist()


def save_strip(images: torch.Tensor, path: Path) -> None:
    """Images (B, 3, H, W) in [0, 1] side by side in one PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(to_uint8(images), axis=1)).save(path)
