"""The optimization loop: one batched run where every element may have its own objective.

Each step is one parameterization forward, one transform call, one truncated model forward (it
stops at the deepest layer any objective reads) and one backward, whatever the batch holds.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from atlas.errors import AtlasError
from atlas.models import LoadedModel, ModelError
from atlas.optvis.objectives import Objective, ObjectiveError, StepState
from atlas.optvis.schedules import SCHEDULES, ScheduleError, resolution_factor
from atlas.optvis.transforms import Transform, preset
from atlas.registry import Registry

OPTIMIZERS = ("adam", "l2", "linf")
# The article's three notions of steepest descent, as (parameterization, decorrelate, optimizer).
STEEPEST_DESCENT: dict[str, tuple[str, bool, str]] = {
    "l2": ("pixel", False, "l2"),
    "linf": ("pixel", False, "linf"),
    "decorrelated": ("fourier", True, "l2"),
}


class RenderError(AtlasError, RuntimeError):
    """An optimization that cannot run or that diverged; the message names the unit and step."""


# Precision name -> autocast dtype (None: plain fp32, no autocast).
PRECISIONS: Registry[torch.dtype | None] = Registry("precision", RenderError)
PRECISIONS.register("fp32", None)
PRECISIONS.register("fp16", torch.float16)
PRECISIONS.register("bf16", torch.bfloat16)


@dataclass
class RenderResult:
    """Final images (B, 3, H, W) in [0, 1], their activations without transforms, and curves."""

    images: torch.Tensor
    activations: dict[str, torch.Tensor]
    loss: torch.Tensor  # (steps, B): minus the objective of each element at each step
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


class SteepestDescent(torch.optim.Optimizer):
    """Plain steepest descent per batch element under the L2 (scaled gradient) or L-inf (sign) norm.

    Both step with a root-mean-square size of ``lr`` per coordinate so the two are comparable.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, norm: str):
        if norm not in ("l2", "linf"):
            raise RenderError(f"steepest descent norm must be 'l2' or 'linf', got {norm!r}")
        super().__init__(params, {"lr": lr, "norm": norm})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["norm"] == "linf":
                    direction = grad.sign()
                else:
                    per_element = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                    scale = (grad[0].numel() ** 0.5) / per_element
                    direction = grad * scale.view(-1, *([1] * (grad.ndim - 1)))
                param.sub_(group["lr"] * direction)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam by default; ``l2``/``linf`` for the article's steepest-descent comparison."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name in ("l2", "linf"):
        return SteepestDescent(params, lr, name)
    raise RenderError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


DIVERGED_HINT = "try a lower lr, precision 'fp32' or another parameterization"


def _name(element: int, labels: Sequence[str] | None) -> str:
    return labels[element] if labels else f"batch element {element}"


def _check_finite(loss: torch.Tensor, images: torch.Tensor, labels: Sequence[str] | None) -> None:
    """Fail loudly on NaN/Inf, naming the first element and step, rather than save a black image."""
    bad = ~torch.isfinite(loss)
    if bad.any():
        step, element = (int(i) for i in bad.nonzero()[0])
        raise RenderError(
            f"optimization diverged for {_name(element, labels)} at step {step + 1}: the objective "
            f"became {loss[step, element].item()} ({DIVERGED_HINT})"
        )
    bad_images = ~torch.isfinite(images.flatten(1)).all(dim=1)
    if bad_images.any():
        element = int(bad_images.nonzero()[0])
        raise RenderError(
            f"the final image of {_name(element, labels)} holds NaN/Inf after the last step ({DIVERGED_HINT})"
        )


@dataclass
class RenderPart:
    """One logical batch: its own objective, parameterization, seed and labels.

    Parts rendered together share each step's model forward and backward (what fills a GPU)
    but nothing else: each draws its transforms from its own seeded generator and reads only its
    own slice of the activations, so a part's result does not depend on its companions (up to
    the floating-point effect of a larger batch on the convolutions).
    """

    objective: Objective
    param: nn.Module
    seed: int = 0
    labels: Sequence[str] | None = None


def render(
    model: LoadedModel,
    objective: Objective,
    param: nn.Module,
    steps: int = 256,
    lr: float = 0.05,
    transforms: str | Transform = "standard",
    optimizer: str = "adam",
    seed: int = 0,
    snapshots: Sequence[int] = (),
    precision: str = "fp32",
    labels: Sequence[str] | None = None,
    lr_schedule: str = "constant",
    coarse_fraction: float = 0.0,
) -> RenderResult:
    """Maximize ``objective`` over the images of ``param`` (one batch, one loop).

    ``labels`` name the batch elements in error messages; ``snapshots`` are steps (1-based) at
    which to keep a copy of the images. Deterministic on CPU for a given seed.
    """
    part = RenderPart(objective, param, seed, labels)
    return render_parts(
        model, [part], steps, lr, transforms, optimizer, snapshots, precision, lr_schedule, coarse_fraction
    )[0]


def _transformed(
    transform: Transform, images: Sequence[torch.Tensor], generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """Every part's images through the transform with its own generator, as one batch; a preset
    (``compose``) resamples all parts at once, a user's own transform is called per part."""
    if len(images) > 1 and hasattr(transform, "parts"):
        return transform.parts(images, generators)
    seen = [transform(batch, gen) for batch, gen in zip(images, generators, strict=True)]
    return seen[0] if len(seen) == 1 else torch.cat(seen)


def _slices(sizes: Sequence[int]) -> list[slice]:
    ends = list(itertools.accumulate(sizes))
    return [slice(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def render_parts(
    model: LoadedModel,
    parts: Sequence[RenderPart],
    steps: int = 256,
    lr: float = 0.05,
    transforms: str | Transform = "standard",
    optimizer: str = "adam",
    snapshots: Sequence[int] = (),
    precision: str = "fp32",
    lr_schedule: str = "constant",
    coarse_fraction: float = 0.0,
) -> list[RenderResult]:
    """Render several logical batches in one physical batch; one result per part, in order.

    ``lr_schedule`` names the learning-rate factor per step (`atlas.optvis.schedules`);
    ``coarse_fraction`` is the share of the steps optimized at a lower resolution of the
    parameterization (multi-resolution) where it has one (``band_limit``: Fourier).
    """
    if steps < 1:
        raise RenderError(f"steps must be at least 1, got {steps}")
    if not 0.0 <= coarse_fraction < 1.0:
        raise RenderError(f"coarse_fraction must be in [0, 1), got {coarse_fraction}")
    try:
        schedule = SCHEDULES.get(lr_schedule)
    except ScheduleError as err:
        raise RenderError(str(err)) from err
    if not parts:
        return []
    for part in parts:
        try:
            part.objective.validate(model)
        except ObjectiveError as err:
            raise RenderError(str(err)) from err
        if not part.objective.layers:
            raise RenderError(f"objective {part.objective.name!r} reads no layer of the model; add one")
    layers = sorted(set().union(*(part.objective.layers for part in parts)))
    params = [part.param.to(model.device) for part in parts]
    try:
        with torch.no_grad():
            sizes = [int(param().shape[-1]) for param in params]
        for size in sizes:
            model.check_input_size(size)
    except ModelError as err:
        raise RenderError(str(err)) from err
    transform = preset(transforms, max(sizes)) if isinstance(transforms, str) else transforms
    # Only parameterizations with a resolution to change (Fourier) take part in multi-resolution;
    # with none of them the render runs at full resolution throughout.
    staged = [param for param in params if hasattr(param, "band_limit")]
    coarse_fraction = coarse_fraction if staged else 0.0
    trainable = [p for param in params for p in param.parameters() if p.requires_grad]
    factor = 1
    generators = [torch.Generator(device="cpu").manual_seed(part.seed) for part in parts]
    cast = _autocast(model.device, precision)
    losses: list[torch.Tensor] = []
    kept: dict[int, list[torch.Tensor]] = {}
    wanted_snapshots = set(snapshots)
    spans: list[slice] = []
    for step in range(1, steps + 1):
        wanted = resolution_factor(step, steps, coarse_fraction) if coarse_fraction else 1
        if step == 1 or wanted != factor:
            # A new resolution is a new parameterization: a fresh optimizer, no stale moments.
            factor = wanted
            for param in staged:
                param.band_limit(factor)
            opt = make_optimizer(optimizer, trainable, lr)
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step, steps)
        opt.zero_grad(set_to_none=True)
        images = [param() for param in params]
        spans = spans or _slices([len(batch) for batch in images])
        with cast:
            activations = model.activations(_transformed(transform, images, generators), layers)
        score = torch.cat(
            [
                part.objective(StepState({n: a[span] for n, a in activations.items()}, batch))
                for part, span, batch in zip(parts, spans, images, strict=True)
            ]
        )
        (-score.sum()).backward()
        opt.step()
        losses.append(-score.detach())
        if step in wanted_snapshots:
            with torch.no_grad():
                kept[step] = [param().detach().float().cpu() for param in params]
    loss = torch.stack(losses).float().cpu()
    with torch.no_grad():
        finals = [param().detach() for param in params]
        for part, span, final in zip(parts, spans, finals, strict=True):
            _check_finite(loss[:, span], final.float().cpu(), part.labels)
        activations = model.activations(torch.cat(finals) if len(finals) > 1 else finals[0], layers)
    return [
        RenderResult(
            images=final.float().cpu(),
            activations={name: act[span].float().cpu() for name, act in activations.items()},
            loss=loss[:, span],
            snapshots={step: images[index] for step, images in kept.items()},
        )
        for index, (span, final) in enumerate(zip(spans, finals, strict=True))
    ]
