"""Optimization objectives: scores to maximize, one value per batch element.

An ``Objective`` maps the state of one step (layer activations + the images) to a (B,) tensor.
Objectives compose with ``+``, ``-``, unary ``-`` and ``*`` (a scalar, or a (B,) tensor of
per-element weights), and each can be bound to some batch elements (``batch=i`` or a list of
indices) or to all of them (``batch=None``). Binding works by indexing, so a batch where every
element has its own channel is still a handful of tensor operations per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atlas.errors import AtlasError
from atlas.models import LOGITS, LoadedModel
from atlas.models.devices import to_device

Batch = int | Sequence[int] | None


class ObjectiveError(AtlasError, ValueError):
    """An objective that does not fit the model or the batch it is used with."""


@dataclass(frozen=True)
class StepState:
    """What an objective may read at one step: activations by layer and the untransformed images."""

    activations: dict[str, torch.Tensor]
    images: torch.Tensor

    @property
    def batch(self) -> int:
        return self.images.shape[0]


Check = Callable[[LoadedModel], None]


class Objective:
    """A named score function plus the layers it reads and the checks it needs on a model."""

    def __init__(
        self,
        score: Callable[[StepState], torch.Tensor],
        name: str,
        layers: frozenset[str] = frozenset(),
        checks: tuple[Check, ...] = (),
    ):
        self.score = score
        self.name = name
        self.layers = layers
        self.checks = checks

    def __call__(self, state: StepState) -> torch.Tensor:
        return self.score(state)

    def validate(self, model: LoadedModel) -> None:
        """Raise a clear error before optimizing if a layer or channel does not exist."""
        for layer in self.layers:
            model.resolve_layer(layer)
        for check in self.checks:
            check(model)

    def _combine(self, other: Objective, sign: float) -> Objective:
        def score(state: StepState) -> torch.Tensor:
            return self(state) + sign * other(state)

        op = "+" if sign > 0 else "-"
        return Objective(
            score, f"{self.name} {op} {other.name}", self.layers | other.layers, self.checks + other.checks
        )

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return self._combine(other, 1.0)
        return Objective(lambda s: self(s) + other, f"{self.name} + {other}", self.layers, self.checks)

    def __radd__(self, other: float) -> Objective:  # lets sum() start from 0
        return self + other

    def __sub__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return self._combine(other, -1.0)
        return self + (-other)

    def __neg__(self) -> Objective:
        return Objective(lambda s: -self(s), f"-({self.name})", self.layers, self.checks)

    def __mul__(self, weight: float | torch.Tensor) -> Objective:
        """Scale by a number, or per element by a (B,) tensor (e.g. interpolation weights)."""

        def score(state: StepState) -> torch.Tensor:
            value = self(state)
            if isinstance(weight, torch.Tensor):
                if weight.shape != value.shape:
                    raise ObjectiveError(
                        f"per-element weights shaped {tuple(weight.shape)} do not match the batch "
                        f"of {value.shape[0]}"
                    )
                return value * to_device(weight, value.device)
            return value * weight

        label = "w" if isinstance(weight, torch.Tensor) else f"{weight:g}"
        return Objective(score, f"{label} * ({self.name})", self.layers, self.checks)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _elements(batch: Batch, size: int, device: torch.device) -> torch.Tensor:
    """Indices of the batch elements an objective is bound to."""
    if batch is None:
        return torch.arange(size, device=device)
    wanted = [batch] if isinstance(batch, int) else [int(i) for i in batch]
    if wanted and (min(wanted) < 0 or max(wanted) >= size):  # checked on the host: no device sync
        raise ObjectiveError(f"objective bound to batch elements {wanted} of a batch of {size}")
    return to_device(torch.as_tensor(wanted), device)


def _scatter(values: torch.Tensor, indices: torch.Tensor, size: int) -> torch.Tensor:
    return values.new_zeros(size).index_add(0, indices, values)


def _per_element(values: int | Sequence[int], count: int, what: str) -> torch.Tensor:
    """An int applies to every bound element; a sequence gives one value per bound element."""
    if isinstance(values, int):
        return torch.full((count,), values, dtype=torch.long)
    tensor = torch.as_tensor(list(values), dtype=torch.long)
    if tensor.numel() != count:
        raise ObjectiveError(f"{tensor.numel()} {what}s given for {count} bound batch elements")
    return tensor


def channel_check(layer: str, channels: int | Sequence[int]) -> Check:
    wanted = [channels] if isinstance(channels, int) else list(channels)

    def check(model: LoadedModel) -> None:
        count = model.channels(layer)
        bad = [c for c in wanted if not 0 <= c < count]
        if bad:
            raise ObjectiveError(
                f"channel {bad[0]} is out of range for layer {layer!r} of {model.name!r}, which has "
                f"{count} channels (0..{count - 1})"
            )

    return check


def _layer_objective(
    layer: str,
    batch: Batch,
    name: str,
    select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    checks: tuple[Check, ...] = (),
) -> Objective:
    """Objective reading ``layer`` for the bound elements: ``select(acts[elements], elements)``."""

    def score(state: StepState) -> torch.Tensor:
        acts = state.activations[layer]
        indices = _elements(batch, acts.shape[0], acts.device)
        return _scatter(select(acts[indices], indices).float(), indices, acts.shape[0])

    return Objective(score, name, frozenset([layer]), checks)


def channel(layer: str, channel: int | Sequence[int], batch: Batch = None) -> Objective:
    """Mean activation of a channel over all positions (one channel per bound element if a list)."""

    def select(acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        chans = to_device(_per_element(channel, len(indices), "channel"), acts.device)
        return acts[torch.arange(len(indices), device=acts.device), chans].mean(dim=(1, 2))

    return _layer_objective(
        layer, batch, f"channel {layer}:{channel}", select, (channel_check(layer, channel),)
    )


def neuron(
    layer: str,
    channel: int | Sequence[int],
    x: int | None = None,
    y: int | None = None,
    batch: Batch = None,
) -> Objective:
    """Activation of a channel at one position (the centre of the map by default)."""

    def select(acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        chans = to_device(_per_element(channel, len(indices), "channel"), acts.device)
        row = acts.shape[2] // 2 if y is None else y
        col = acts.shape[3] // 2 if x is None else x
        if not (0 <= row < acts.shape[2] and 0 <= col < acts.shape[3]):
            raise ObjectiveError(
                f"neuron position (x={col}, y={row}) is outside the {acts.shape[3]}x{acts.shape[2]} "
                f"map of layer {layer!r}"
            )
        return acts[torch.arange(len(indices), device=acts.device), chans, row, col]

    return _layer_objective(
        layer, batch, f"neuron {layer}:{channel}", select, (channel_check(layer, channel),)
    )


def deepdream(layer: str, batch: Batch = None) -> Objective:
    """The layer objective (DeepDream): mean squared activation over channels and positions."""
    return _layer_objective(
        layer, batch, f"deepdream {layer}", lambda acts, _i: acts.float().pow(2).mean(dim=(1, 2, 3))
    )


def _logit_check(label: int) -> Check:
    def check(model: LoadedModel) -> None:
        # One forward at the model's own input size: some models cannot run on tiny inputs.
        size = model.input_size
        with torch.no_grad():
            probe = torch.zeros(1, 3, size, size, device=model.device)
            count = model.activations(probe, [LOGITS])[LOGITS].shape[1]
        if not 0 <= label < count:
            raise ObjectiveError(
                f"class {label} is out of range for {model.name!r}, which has {count} classes "
                f"(0..{count - 1})"
            )

    return check


def class_logit(label: int, batch: Batch = None) -> Objective:
    """The pre-softmax score of a class."""
    return _layer_objective(
        LOGITS, batch, f"logit {label}", lambda logits, _i: logits[:, label], (_logit_check(label),)
    )


def class_probability(label: int, batch: Batch = None) -> Objective:
    """The softmax probability of a class (pushes other classes down too)."""
    return _layer_objective(
        LOGITS,
        batch,
        f"probability {label}",
        lambda logits, _i: torch.softmax(logits.float(), dim=1)[:, label],
        (_logit_check(label),),
    )


def _direction_check(layer: str, size: int) -> Check:
    def check(model: LoadedModel) -> None:
        count = model.channels(layer)
        if count != size:
            raise ObjectiveError(f"direction has {size} components but layer {layer!r} has {count} channels")

    return check


def direction(layer: str, vectors: torch.Tensor, batch: Batch = None, cosine_power: float = 0.0) -> Objective:
    """Dot product with a vector in activation space, averaged over positions.

    ``vectors`` is (C,) for every bound element or (k, C), one per bound element. With
    ``cosine_power > 0`` each position's dot product is weighted by cos^power (clamped at 0), which
    favours activations that point along the direction over ones that are merely large.
    """
    vectors = vectors.float()
    matrix = vectors if vectors.ndim == 2 else vectors[None]

    def select(acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        per_element = matrix.expand(len(indices), -1) if len(matrix) == 1 else matrix
        if len(per_element) != len(indices):
            raise ObjectiveError(f"{len(per_element)} directions given for {len(indices)} bound elements")
        per_element = to_device(per_element, acts.device)
        dots = torch.einsum("bchw,bc->bhw", acts.float(), per_element)
        if cosine_power > 0:
            norms = acts.float().norm(dim=1) * per_element.norm(dim=1)[:, None, None] + 1e-8
            dots = dots * (dots / norms).clamp_min(1e-4).pow(cosine_power)
        return dots.mean(dim=(1, 2))

    return _layer_objective(
        layer, batch, f"direction {layer}", select, (_direction_check(layer, matrix.shape[1]),)
    )


def random_unit_vectors(channels: int, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded random unit vectors (count, channels): the 'random directions' baseline."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vectors = torch.randn(count, channels, generator=generator)
    return vectors / vectors.norm(dim=1, keepdim=True)


def gram_cosines(acts: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of flattened Gram matrices: (..., g, C, H, W) -> (..., g, g)."""
    flat = acts.float().flatten(-2)
    grams = flat @ flat.transpose(-1, -2)
    unit = F.normalize(grams.flatten(-2), dim=-1)
    return unit @ unit.transpose(-1, -2)


def diversity(layer: str, groups: Sequence[Sequence[int]] | None = None) -> Objective:
    """The article's diversity term C = - sum_a sum_{b != a} cos(vec(G_a), vec(G_b)) per group.

    Element a of a group scores -sum_{b != a} cos(G_a, G_b), so the group's scores sum to C.
    ``groups=None`` makes the whole batch one group; groups must all have the same size.
    """
    if groups is not None and len({len(g) for g in groups}) > 1:
        raise ObjectiveError(f"diversity groups must have equal sizes, got {[len(g) for g in groups]}")

    def score(state: StepState) -> torch.Tensor:
        acts = state.activations[layer]
        size = acts.shape[0]
        index = (
            torch.arange(size, device=acts.device)[None]
            if groups is None
            else to_device(torch.as_tensor([list(g) for g in groups]), acts.device)
        )
        cosines = gram_cosines(acts[index])  # (G, g, g)
        others = cosines.sum(dim=-1) - cosines.diagonal(dim1=-2, dim2=-1)
        return _scatter(-others.flatten(), index.flatten(), size)

    return Objective(score, f"diversity {layer}", frozenset([layer]))


def alignment(layer: str, batch: Sequence[int]) -> Objective:
    """Minus the mean squared activation difference between neighbours in ``batch`` order.

    The interpolation figure adds this (small) so consecutive images share their layout.
    """

    def score(state: StepState) -> torch.Tensor:
        acts = state.activations[layer]
        index = _elements(batch, acts.shape[0], acts.device)
        gaps = (acts[index[1:]].float() - acts[index[:-1]].float()).pow(2).mean(dim=(1, 2, 3))
        penalty = acts.new_zeros(acts.shape[0], dtype=torch.float32)
        penalty = penalty.index_add(0, index[1:], gaps / 2).index_add(0, index[:-1], gaps / 2)
        return -penalty

    return Objective(score, f"alignment {layer}", frozenset([layer]))


def interpolate(first: Objective, second: Objective, batch: Sequence[int], size: int) -> Objective:
    """Convex mix across ``batch`` (in order): element i scores (1 - t_i) first + t_i second."""
    steps = torch.linspace(0.0, 1.0, len(batch)) if len(batch) > 1 else torch.zeros(1)
    weight_first = torch.zeros(size)
    weight_second = torch.zeros(size)
    weight_first[list(batch)] = 1.0 - steps
    weight_second[list(batch)] = steps
    return first * weight_first + second * weight_second


def _image_objective(name: str, batch: Batch, measure: Callable[[torch.Tensor], torch.Tensor]) -> Objective:
    def score(state: StepState) -> torch.Tensor:
        indices = _elements(batch, state.batch, state.images.device)
        return _scatter(measure(state.images[indices].float()), indices, state.batch)

    return Objective(score, name)


def l1(constant: float = 0.5, batch: Batch = None) -> Objective:
    """Mean |image - constant|: a penalty, subtract it (``obj - w * l1()``)."""
    return _image_objective("l1", batch, lambda x: (x - constant).abs().mean(dim=(1, 2, 3)))


def total_variation(batch: Batch = None) -> Objective:
    """Mean absolute difference between neighbouring pixels: a penalty, subtract it."""

    def measure(x: torch.Tensor) -> torch.Tensor:
        dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
        dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
        return dx + dy

    return _image_objective("total_variation", batch, measure)


def blur(batch: Batch = None) -> Objective:
    """Half the squared distance to a 3x3-blurred copy (held fixed): a penalty, subtract it."""

    def measure(x: torch.Tensor) -> torch.Tensor:
        blurred = F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), 3, stride=1).detach()
        return 0.5 * (x - blurred).pow(2).sum(dim=(1, 2, 3))

    return _image_objective("blur", batch, measure)
