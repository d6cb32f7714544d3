"""The optimization loop: one batched run where every element may have its own objective.

Each step is one parameterization forward, one transform call, one truncated model forward (it
stops at the deepest layer any objective reads) and one backward, whatever the batch holds. A
physical batch of many parts (`render_parts`) costs the same number of operator calls per step
as one part: parameterizations that compute alike run as one module (`param.stack`), objectives
that are sums of terms are evaluated one call per measure (`objectives.bind_terms`), and the
transforms are drawn before the loop, each part from its own generator
(scripts/bench_step.py measures it).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from atlas.core.errors import AtlasError
from atlas.core.registry import Registry
from atlas.models import LoadedModel, ModelError
from atlas.optvis.objectives import Objective, ObjectiveError, StepState, bind_terms
from atlas.optvis.param import stack, unstack
from atlas.optvis.schedules import SCHEDULES, ScheduleError, resolution_factor
from atlas.optvis.transforms import Transform, preset

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


def _slices(sizes: Sequence[int]) -> list[slice]:
    ends = list(itertools.accumulate(sizes))
    return [slice(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def _transforms(
    transform: Transform, counts: Sequence[int], size: int, generators: Sequence[torch.Generator], steps: int
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Step ``index``'s transform of the physical batch, each part's images drawn from its own
    generator: a preset (``compose``) draws every step up front and resamples the batch at once;
    a user's own transform is called part by part."""
    if hasattr(transform, "ahead"):
        return transform.ahead(counts, (size, size), generators, steps)

    def each(images: torch.Tensor, index: int) -> torch.Tensor:
        seen = [
            transform(batch, gen) for batch, gen in zip(images.split(list(counts)), generators, strict=True)
        ]
        return seen[0] if len(seen) == 1 else torch.cat(seen)

    return each


def _scorer(
    parts: Sequence[RenderPart], counts: Sequence[int], spans: Sequence[slice], device: torch.device
) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """The physical batch's scores: objectives that are sums of terms evaluated together (one
    call per measure for all parts), any other objective on its own part's slice."""
    try:
        bound = bind_terms(
            [(part.objective.terms or (), count) for part, count in zip(parts, counts, strict=True)], device
        )
    except ObjectiveError as err:
        raise RenderError(str(err)) from err
    alone = [
        (part.objective, span)
        for part, span in zip(parts, spans, strict=True)
        if part.objective.terms is None
    ]

    def score(activations: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        total = bound(StepState(activations, images))
        for objective, span in alone:
            own = objective(StepState({n: a[span] for n, a in activations.items()}, images[span]))
            total = total.slice_scatter(total[span] + own, start=span.start, end=span.stop)
        return total

    return score


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
            shapes = [tuple(param().shape) for param in params]
        for shape in shapes:
            model.check_input_size(shape[-1])
    except ModelError as err:
        raise RenderError(str(err)) from err
    size = max(shape[-1] for shape in shapes)
    transform = preset(transforms, size) if isinstance(transforms, str) else transforms
    # Parts whose parameterizations compute alike run as one module (one call, one optimizer
    # tensor); the physical batch holds the parts group by group.
    groups = stack(params)
    modules = [module for module, _ in groups]
    order = [index for _, members in groups for index in members]
    counts = [shapes[index][0] for index in order]
    spans = [slice(0)] * len(parts)
    for index, span in zip(order, _slices(counts), strict=True):
        spans[index] = span
    physical = [parts[index] for index in order]
    generators = [torch.Generator(device="cpu").manual_seed(part.seed) for part in physical]
    transformed = _transforms(transform, counts, size, generators, steps)
    score_of = _scorer(physical, counts, [spans[index] for index in order], model.device)
    # Only parameterizations with a resolution to change (Fourier) take part in multi-resolution;
    # with none of them the render runs at full resolution throughout.
    staged = [module for module in modules if hasattr(module, "band_limit")]
    coarse_fraction = coarse_fraction if staged else 0.0
    trainable = [p for module in modules for p in module.parameters() if p.requires_grad]
    factor = 1
    cast = _autocast(model.device, precision)
    losses: list[torch.Tensor] = []
    kept: dict[int, torch.Tensor] = {}
    wanted_snapshots = set(snapshots)

    def draw() -> torch.Tensor:
        return torch.cat([module() for module in modules]) if len(modules) > 1 else modules[0]()

    for step in range(1, steps + 1):
        wanted = resolution_factor(step, steps, coarse_fraction, size) if coarse_fraction else 1
        if step == 1 or wanted != factor:
            # A new resolution is a new parameterization: a fresh optimizer, no stale moments.
            factor = wanted
            for module in staged:
                module.band_limit(factor)
            opt = make_optimizer(optimizer, trainable, lr)
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step, steps)
        opt.zero_grad(set_to_none=True)
        images = draw()
        with cast:
            activations = model.activations(transformed(images, step - 1), layers)
        score = score_of(activations, images)
        (-score.sum()).backward()
        opt.step()
        losses.append(-score.detach())
        if step in wanted_snapshots:
            with torch.no_grad():
                kept[step] = draw().detach().float().cpu()
    loss = torch.stack(losses).float().cpu()
    for module, members in groups:
        unstack(module, [params[index] for index in members])
    with torch.no_grad():
        final = draw().detach()
        for part, span in zip(parts, spans, strict=True):
            _check_finite(loss[:, span], final[span].float().cpu(), part.labels)
        activations = model.activations(final, layers)
    return [
        RenderResult(
            images=final[span].float().cpu(),
            activations={name: act[span].float().cpu() for name, act in activations.items()},
            loss=loss[:, span],
            snapshots={step: images[span] for step, images in kept.items()},
        )
        for span in spans
    ]
