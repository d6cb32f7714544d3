"""Optimization objectives: scores to maximize, one value per batch element.

An ``Objective`` maps the state of one step (layer activations + the images) to a (B,) tensor.
Objectives compose with ``+``, ``-``, unary ``-`` and ``*`` (a scalar, or a (B,) tensor of
per-element weights), and each can be bound to some batch elements (``batch=i`` or a list of
indices) or to all of them (``batch=None``). Binding works by indexing, so a batch where every
element has its own channel is still a handful of tensor operations per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from atlas.core.errors import AtlasError
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


@dataclass(frozen=True)
class Term:
    """``weight`` times a named measure (`MEASURES`) of the bound elements, one channel each where
    the measure reads one. An objective that is a weighted sum of terms can be evaluated together
    with other objectives' terms (`bind_terms`): a physical batch of many parts then costs one
    call per measure, not one per part. ``group``: the measure scores groups of elements (the
    diversity term): consecutive bound elements in groups of this size, 0 for one group of all."""

    measure: str
    options: tuple[object, ...]
    batch: Batch = None
    channels: int | Sequence[int] | None = None
    group: int | None = None
    weight: float = 1.0


class Objective:
    """A named score function plus the layers it reads and the checks it needs on a model.

    ``terms``: the same score as a weighted sum of `Term`s, where it is one (None otherwise: a
    constant offset, per-element weights or a custom score), for evaluation across parts.
    """

    def __init__(
        self,
        score: Callable[[StepState], torch.Tensor],
        name: str,
        layers: frozenset[str] = frozenset(),
        checks: tuple[Check, ...] = (),
        terms: tuple[Term, ...] | None = None,
    ):
        self.score = score
        self.name = name
        self.layers = layers
        self.checks = checks
        self.terms = terms

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
        terms = None if self.terms is None or other.terms is None else self.terms + _scaled(other.terms, sign)
        return Objective(
            score,
            f"{self.name} {op} {other.name}",
            self.layers | other.layers,
            self.checks + other.checks,
            terms,
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
        return Objective(
            lambda s: -self(s), f"-({self.name})", self.layers, self.checks, _scaled(self.terms, -1.0)
        )

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

        if isinstance(weight, torch.Tensor):
            return Objective(score, f"w * ({self.name})", self.layers, self.checks)
        return Objective(
            score, f"{weight:g} * ({self.name})", self.layers, self.checks, _scaled(self.terms, weight)
        )

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _scaled(terms: tuple[Term, ...] | None, factor: float) -> tuple[Term, ...] | None:
    return None if terms is None else tuple(replace(term, weight=term.weight * factor) for term in terms)


# A measure: (state, options, element indices, one channel per element, group size) -> one value
# per index. Values of several parts' elements are computed in one call.
Measure = Callable[[StepState, tuple, torch.Tensor, torch.Tensor, int], torch.Tensor]
MEASURES: dict[str, Measure] = {}


def _bound(batch: Batch, size: int) -> list[int]:
    """The batch elements an objective is bound to, checked against the batch size."""
    if batch is None:
        return list(range(size))
    wanted = [batch] if isinstance(batch, int) else [int(i) for i in batch]
    if wanted and (min(wanted) < 0 or max(wanted) >= size):  # checked on the host: no device sync
        raise ObjectiveError(f"objective bound to batch elements {wanted} of a batch of {size}")
    return wanted


@dataclass(frozen=True)
class BoundTerms:
    """Terms of many parts, merged by what they measure: scores a physical batch of ``size``
    elements with one call per measure (`bind_terms`)."""

    size: int
    calls: tuple[tuple[str, tuple, int, torch.Tensor, torch.Tensor, torch.Tensor], ...]

    def __call__(self, state: StepState) -> torch.Tensor:
        total = torch.zeros(self.size, device=state.images.device)
        for measure, options, group, indices, channels, weights in self.calls:
            values = MEASURES[measure](state, options, indices, channels, group).float()
            total = total.index_add(0, indices, values * weights)
        return total


def bind_terms(parts: Sequence[tuple[Sequence[Term], int]], device: torch.device) -> BoundTerms:
    """The terms of each part, (terms, batch size) in physical-batch order, bound to the elements
    they read there; terms of one measure and options (and group size) become one call. Raises
    ObjectiveError for elements or channels that do not fit a part."""
    merged: dict[tuple, tuple[list[int], list[int], list[float]]] = {}
    offset = 0
    for terms, size in parts:
        for term in terms:
            elements = _bound(term.batch, size)
            group = len(elements) if term.group == 0 else term.group or 0
            indices, channels, weights = merged.setdefault((term.measure, term.options, group), ([], [], []))
            indices.extend(offset + element for element in elements)
            if term.channels is not None:
                channels.extend(_per_element(term.channels, len(elements), "channel").tolist())
            weights.extend([term.weight] * len(elements))
        offset += size
    calls = tuple(
        (
            measure,
            options,
            group,
            to_device(torch.as_tensor(indices, dtype=torch.long), device),
            to_device(torch.as_tensor(channels, dtype=torch.long), device),
            to_device(torch.as_tensor(weights, dtype=torch.float32), device),
        )
        for (measure, options, group), (indices, channels, weights) in merged.items()
    )
    return BoundTerms(offset, calls)


def _term_objective(
    term: Term, name: str, layers: frozenset[str], checks: tuple[Check, ...] = ()
) -> Objective:
    """An objective that is one term: called alone, it binds the term to the batch it is given."""

    def score(state: StepState) -> torch.Tensor:
        return bind_terms([((term,), state.batch)], state.images.device)(state)

    return Objective(score, name, layers, checks, (term,))


def _elements(batch: Batch, size: int, device: torch.device) -> torch.Tensor:
    """Indices of the batch elements an objective is bound to."""
    return to_device(torch.as_tensor(_bound(batch, size), dtype=torch.long), device)


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


def _channel_mean(
    state: StepState, options: tuple, indices: torch.Tensor, channels: torch.Tensor, _g: int
) -> torch.Tensor:
    (layer,) = options
    return state.activations[layer][indices, channels].mean(dim=(1, 2))


def _neuron_value(
    state: StepState, options: tuple, indices: torch.Tensor, channels: torch.Tensor, _g: int
) -> torch.Tensor:
    layer, x, y = options
    acts = state.activations[layer]
    row = acts.shape[2] // 2 if y is None else y
    col = acts.shape[3] // 2 if x is None else x
    if not (0 <= row < acts.shape[2] and 0 <= col < acts.shape[3]):
        raise ObjectiveError(
            f"neuron position (x={col}, y={row}) is outside the {acts.shape[3]}x{acts.shape[2]} "
            f"map of layer {layer!r}"
        )
    return acts[indices, channels, row, col]


def _mean_square(
    state: StepState, options: tuple, indices: torch.Tensor, _c: torch.Tensor, _g: int
) -> torch.Tensor:
    (layer,) = options
    return state.activations[layer][indices].float().pow(2).mean(dim=(1, 2, 3))


MEASURES.update(channel=_channel_mean, neuron=_neuron_value, deepdream=_mean_square)


def channel(layer: str, channel: int | Sequence[int], batch: Batch = None) -> Objective:
    """Mean activation of a channel over all positions (one channel per bound element if a list)."""
    term = Term("channel", (layer,), batch, channel)
    return _term_objective(
        term, f"channel {layer}:{channel}", frozenset([layer]), (channel_check(layer, channel),)
    )


def neuron(
    layer: str,
    channel: int | Sequence[int],
    x: int | None = None,
    y: int | None = None,
    batch: Batch = None,
) -> Objective:
    """Activation of a channel at one position (the centre of the map by default)."""
    term = Term("neuron", (layer, x, y), batch, channel)
    return _term_objective(
        term, f"neuron {layer}:{channel}", frozenset([layer]), (channel_check(layer, channel),)
    )


def deepdream(layer: str, batch: Batch = None) -> Objective:
    """The layer objective (DeepDream): mean squared activation over channels and positions."""
    return _term_objective(Term("deepdream", (layer,), batch), f"deepdream {layer}", frozenset([layer]))


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


def _logit(
    state: StepState, options: tuple, indices: torch.Tensor, _c: torch.Tensor, _g: int
) -> torch.Tensor:
    (label,) = options
    return state.activations[LOGITS][indices, label]


def _probability(
    state: StepState, options: tuple, indices: torch.Tensor, _c: torch.Tensor, _g: int
) -> torch.Tensor:
    (label,) = options
    return torch.softmax(state.activations[LOGITS][indices].float(), dim=1)[:, label]


MEASURES.update(logit=_logit, probability=_probability)


def class_logit(label: int, batch: Batch = None) -> Objective:
    """The pre-softmax score of a class."""
    term = Term("logit", (label,), batch)
    return _term_objective(term, f"logit {label}", frozenset([LOGITS]), (_logit_check(label),))


def class_probability(label: int, batch: Batch = None) -> Objective:
    """The softmax probability of a class (pushes other classes down too)."""
    term = Term("probability", (label,), batch)
    return _term_objective(term, f"probability {label}", frozenset([LOGITS]), (_logit_check(label),))


def _direction_check(layer: str, size: int) -> Check:
    def check(model: LoadedModel) -> None:
        count = model.channels(layer)
        if count != size:
            raise ObjectiveError(f"direction has {size} components but layer {layer!r} has {count} channels")

    return check


def _vector_rows(matrix: torch.Tensor, indices: torch.Tensor, acts: torch.Tensor, what: str) -> torch.Tensor:
    """One row of `matrix` (k, C) per bound element (one row for all when k = 1), on the device."""
    rows = matrix.expand(len(indices), -1) if len(matrix) == 1 else matrix
    if len(rows) != len(indices):
        raise ObjectiveError(f"{len(rows)} {what} given for {len(indices)} bound elements")
    return to_device(rows, acts.device)


def direction(layer: str, vectors: torch.Tensor, batch: Batch = None, cosine_power: float = 0.0) -> Objective:
    """Dot product with a vector in activation space, averaged over positions.

    ``vectors`` is (C,) for every bound element or (k, C), one per bound element. With
    ``cosine_power > 0`` each position's dot product is weighted by cos^power (clamped at 0), which
    favours activations that point along the direction over ones that are merely large.
    """
    vectors = vectors.float()
    matrix = vectors if vectors.ndim == 2 else vectors[None]

    def select(acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        per_element = _vector_rows(matrix, indices, acts, "directions")
        dots = torch.einsum("bchw,bc->bhw", acts.float(), per_element)
        if cosine_power > 0:
            norms = acts.float().norm(dim=1) * per_element.norm(dim=1)[:, None, None] + 1e-8
            dots = dots * (dots / norms).clamp_min(1e-4).pow(cosine_power)
        return dots.mean(dim=(1, 2))

    return _layer_objective(
        layer, batch, f"direction {layer}", select, (_direction_check(layer, matrix.shape[1]),)
    )


def mean_match(layer: str, targets: torch.Tensor, batch: Batch = None) -> Objective:
    """How close the activation averaged over positions comes to a target vector (higher: closer).

    ``targets`` is (C,) for every bound element or (k, C), one per bound element. The score is
    minus the squared distance of the spatially averaged activation from the target, divided by
    the target's squared norm: 0 when they are equal, -1 for an activation of zero. Its gradient
    is the remaining difference, which vanishes only at the target: an image whose activation
    starts pointing away from the target (a signed layer, any start) is pulled toward it as
    strongly as one that starts close, and the score does not depend on where the layer's origin
    is (a centred or an all-positive layer alike). Activation atlas icons use it with cell means.
    """
    targets = targets.float()
    matrix = targets if targets.ndim == 2 else targets[None]

    def select(acts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        per_element = _vector_rows(matrix, indices, acts, "targets")
        mean = acts.float().mean(dim=(2, 3))
        scale = per_element.pow(2).sum(dim=1).clamp_min(1e-12)
        return -(mean - per_element).pow(2).sum(dim=1) / scale

    return _layer_objective(
        layer, batch, f"mean match {layer}", select, (_direction_check(layer, matrix.shape[1]),)
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

    if groups is None:
        term = Term("diversity", (layer,), group=0)
    else:
        term = Term(
            "diversity", (layer,), [i for g in groups for i in g], group=len(groups[0]) if groups else 0
        )
    return _term_objective(term, f"diversity {layer}", frozenset([layer]))


def _gram_dissent(
    state: StepState, options: tuple, indices: torch.Tensor, _c: torch.Tensor, group: int
) -> torch.Tensor:
    """Minus each element's summed Gram cosine to the others of its group (consecutive indices)."""
    (layer,) = options
    cosines = gram_cosines(state.activations[layer][indices.view(-1, group)])  # (G, g, g)
    others = cosines.sum(dim=-1) - cosines.diagonal(dim1=-2, dim2=-1)
    return -others.flatten()


MEASURES["diversity"] = _gram_dissent


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


def _image_term(name: str, options: tuple[object, ...], batch: Batch) -> Objective:
    return _term_objective(Term(name, options, batch), name, frozenset())


def l1(constant: float = 0.5, batch: Batch = None) -> Objective:
    """Mean |image - constant|: a penalty, subtract it (``obj - w * l1()``)."""
    return _image_term("l1", (constant,), batch)


def total_variation(batch: Batch = None) -> Objective:
    """Mean absolute difference between neighbouring pixels: a penalty, subtract it."""
    return _image_term("total_variation", (), batch)


def blur(batch: Batch = None) -> Objective:
    """Half the squared distance to a 3x3-blurred copy (held fixed): a penalty, subtract it."""
    return _image_term("blur", (), batch)


def _image_measure(measure: Callable[..., torch.Tensor]) -> Measure:
    def values(
        state: StepState, options: tuple, indices: torch.Tensor, _c: torch.Tensor, _g: int
    ) -> torch.Tensor:
        return measure(state.images[indices].float(), *options)

    return values


def _distance(x: torch.Tensor, constant: float) -> torch.Tensor:
    return (x - constant).abs().mean(dim=(1, 2, 3))


def _variation(x: torch.Tensor) -> torch.Tensor:
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean(dim=(1, 2, 3))
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean(dim=(1, 2, 3))
    return dx + dy


def _blur_distance(x: torch.Tensor) -> torch.Tensor:
    blurred = F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), 3, stride=1).detach()
    return 0.5 * (x - blurred).pow(2).sum(dim=(1, 2, 3))


MEASURES.update(
    l1=_image_measure(_distance),
    total_variation=_image_measure(_variation),
    blur=_image_measure(_blur_distance),
)
