"""What the atlas renders for a unit: channel sets, random directions and neuron pairs.

These functions turn job settings (``atlas.plan.spec.RenderSpec`` or anything with the same attribute
names) into batched ``render`` calls and flatten the result into ``RenderedImage`` rows that
match the ``render`` shard columns of docs/CONTRACTS.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from atlas.models import LoadedModel
from atlas.optvis import objectives as obj
from atlas.optvis.autobatch import pass_capacity
from atlas.optvis.named import OBJECTIVES, Term, channel_objectives
from atlas.optvis.param import make_param
from atlas.optvis.render import RenderError, RenderPart, RenderResult, render_parts

# Weight of the neighbour-alignment term in interpolations, relative to the channel objectives.
ALIGNMENT_WEIGHT = 1e-2


class RenderSettings(Protocol):
    """The attributes of ``atlas.plan.spec.RenderSpec`` that rendering reads."""

    steps: int
    size: int
    batch: int
    lr: float
    param: str
    decorrelate: bool
    decay_power: float
    transforms: str
    objectives: Sequence[str]
    diversity: int
    diversity_weight: float
    seed: int
    precision: str
    lr_schedule: str
    coarse_fraction: float
    blur_weight: float


@dataclass
class RenderedImage:
    """One row of a ``render`` shard (without the unit key, which the caller knows)."""

    layer: str
    channel: int
    objective: str
    variant: int
    label: str
    image: np.ndarray  # H x W x 3 uint8
    activation: float
    loss: list[float] = field(default_factory=list)
    channel_b: int = -1
    vector: np.ndarray | None = None  # the final image's mean activation vector, where one was kept


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) floats in [0, 1] to a list of H x W x 3 uint8 arrays."""
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(array)


def _part(
    objective: obj.Objective,
    settings: RenderSettings,
    batch: int,
    seed: int,
    labels: Sequence[str],
    shared: bool = False,
) -> RenderPart:
    param = make_param(
        settings.param,
        batch,
        settings.size,
        seed=seed,
        decay_power=settings.decay_power,
        decorrelate=settings.decorrelate,
        shared=shared,
    )
    if settings.blur_weight:
        objective = objective - settings.blur_weight * obj.blur()
    return RenderPart(objective, param, seed, labels)


def _render(model: LoadedModel, parts: Sequence[RenderPart], settings: RenderSettings) -> list[RenderResult]:
    return render_parts(
        model,
        parts,
        steps=settings.steps,
        lr=settings.lr,
        transforms=settings.transforms,
        precision=settings.precision,
        lr_schedule=settings.lr_schedule,
        coarse_fraction=settings.coarse_fraction,
    )


def render_objective(
    model: LoadedModel,
    objective: obj.Objective,
    settings: RenderSettings,
    batch: int,
    seed: int,
    labels: Sequence[str],
    shared: bool = False,
) -> RenderResult:
    """``batch`` images of any objective, rendered with the recipe of ``settings`` (one optimization)."""
    return _render(model, [_part(objective, settings, batch, seed, labels, shared)], settings)[0]


def _passes(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Consecutive chunks grouped into physical batches of at most ``capacity`` images each."""
    passes: list[list[int]] = []
    filled = capacity
    for index, size in enumerate(sizes):
        if filled + size > capacity:
            passes.append([])
            filled = 0
        passes[-1].append(index)
        filled += size
    return passes


@dataclass(frozen=True)
class _Item:
    """One requested visualization of a channel: ``count`` images (more than one for diversity)."""

    channel: int
    objective: str
    count: int


def _pack(items: Sequence[_Item], batch: int) -> list[list[_Item]]:
    """First-fit-decreasing chunks of at most ``batch`` images; a diversity group is never split.

    Fewer, fuller chunks mean fewer optimizations for the same images (what a GPU wants).
    """
    chunks: list[list[_Item]] = []
    room: list[int] = []
    for item in sorted(items, key=lambda i: -i.count):
        free = next((i for i, left in enumerate(room) if left >= item.count), None)
        if free is None:
            chunks.append([])
            room.append(max(batch, item.count))
            free = len(chunks) - 1
        chunks[free].append(item)
        room[free] -= item.count
    return chunks


def _check_channels(model: LoadedModel, layer: str, channels: Sequence[int]) -> None:
    """The objectives' own range check, reported as a render failure of the unit."""
    try:
        obj.channel_check(layer, channels)(model)
    except obj.ObjectiveError as err:
        raise RenderError(str(err)) from err


def _chunk_objective(layer: str, chunk: Sequence[_Item], settings: RenderSettings) -> obj.Objective:
    """One objective for a whole chunk: a few vectorized terms, not one term per element."""
    by_term: dict[Term, tuple[list[int], list[int]]] = {}
    groups: list[list[int]] = []
    position = 0
    for item in chunk:
        kind = OBJECTIVES.get(item.objective)
        elements, channels = by_term.setdefault(kind.term, ([], []))
        members = list(range(position, position + item.count))
        elements.extend(members)
        channels.extend([item.channel] * item.count)
        if kind.diverse and item.count > 1:
            groups.append(members)
        position += item.count
    terms = [term(layer, channels, elements) for term, (elements, channels) in by_term.items()]
    if groups:
        terms.append(settings.diversity_weight * obj.diversity(layer, groups))
    return sum(terms[1:], terms[0])


def _label(channel: int, objective: str, variant: int, count: int) -> str:
    if OBJECTIVES.get(objective).diverse:
        return f"channel {channel} ({objective} {variant + 1}/{count})"
    if objective == "channel":
        return f"channel {channel}"
    return f"channel {channel} ({objective})"


@dataclass
class _Prepared:
    """One channel set's optimizations before they run: its chunks' parts and who is where."""

    layer: str
    items: list[_Item]
    slots: list[list[tuple[_Item, int]]]  # per chunk: (item, variant) of each batch element
    parts: list[RenderPart]


def _prepare(model: LoadedModel, layer: str, channels: Sequence[int], settings: RenderSettings) -> _Prepared:
    known = channel_objectives()
    unknown = [o for o in settings.objectives if o not in known]
    if unknown:
        raise RenderError(f"unknown render objective {unknown[0]!r}; use some of {', '.join(known)}")
    layer = model.resolve_layer(layer)
    _check_channels(model, layer, channels)
    items = [
        _Item(c, o, settings.diversity if OBJECTIVES.get(o).diverse else 1)
        for c in channels
        for o in settings.objectives
    ]
    chunks = _pack(items, settings.batch)
    slots = [[(item, variant) for item in chunk for variant in range(item.count)] for chunk in chunks]
    parts = [
        _part(
            _chunk_objective(layer, chunk, settings),
            settings,
            len(chunk_slots),
            settings.seed + index,
            [f"{layer} {_label(i.channel, i.objective, v, i.count)}" for i, v in chunk_slots],
        )
        for index, (chunk, chunk_slots) in enumerate(zip(chunks, slots, strict=True))
    ]
    return _Prepared(layer, items, slots, parts)


def _rows(prepared: _Prepared, results: Sequence[RenderResult]) -> list[RenderedImage]:
    rows: list[RenderedImage] = []
    layer = prepared.layer
    for chunk_slots, result in zip(prepared.slots, results, strict=True):
        means = result.activations[layer].mean(dim=(2, 3))
        images = to_uint8(result.images)
        for element, (item, variant) in enumerate(chunk_slots):
            rows.append(
                RenderedImage(
                    layer=layer,
                    channel=item.channel,
                    objective=item.objective,
                    variant=variant,
                    label=_label(item.channel, item.objective, variant, item.count),
                    image=images[element],
                    activation=float(means[element, item.channel]),
                    loss=result.loss[:, element].tolist(),
                )
            )
    order = {(item.channel, item.objective): n for n, item in enumerate(prepared.items)}
    return sorted(rows, key=lambda row: (order[(row.channel, row.objective)], row.variant))


def render_channels(
    model: LoadedModel,
    layer: str,
    channels: Sequence[int],
    settings: RenderSettings,
    images_per_pass: int | None = None,
) -> list[RenderedImage]:
    """Every requested objective for every channel, in as few batched optimizations as fit.

    Objectives come from ``settings.objectives`` (see ``atlas.optvis.named``); the
    images are packed into chunks of ``settings.batch``, and each chunk is one optimization
    with its own seed: the chunks decide the pictures (and the content key holds the batch).
    Several chunks share each step's forward pass when ``images_per_pass`` allows (default: as
    many as the free GPU memory holds, see ``atlas.optvis.autobatch``; on CPU one chunk a pass).
    """
    return render_channel_sets(model, [(layer, channels)], settings, images_per_pass)[0]


def render_channel_sets(
    model: LoadedModel,
    requests: Sequence[tuple[str, Sequence[int]]],
    settings: RenderSettings,
    images_per_pass: int | None = None,
) -> list[list[RenderedImage]]:
    """``render_channels`` for several (layer, channels) sets (several units) at once: their
    chunks share physical batches, and each set gets back exactly the rows it gets alone (each
    chunk keeps its own seed and objective; companions change only the batch the convolutions
    see). Only sets of one layer share a pass: a pass runs the model to its deepest layer, and
    a shallow layer's images would pay for the deep one's (measured on CPU: same-layer packing is
    bitwise identical to rendering alone; mixing layers moved pictures by a grey level).
    """
    finished = dict(iter_channel_sets(model, requests, settings, images_per_pass))
    return [finished[index] for index in range(len(requests))]


def iter_channel_sets(
    model: LoadedModel,
    requests: Sequence[tuple[str, Sequence[int]]],
    settings: RenderSettings,
    images_per_pass: int | None = None,
) -> Iterator[tuple[int, list[RenderedImage]]]:
    """``render_channel_sets`` one set at a time: (index of the request, its rows) as soon as
    the physical pass holding the set's last chunk is done, so that a caller can hand a finished
    set's host-side work (PNG encoding, tables) to another thread while the next pass optimizes.
    Every request is checked before the first pass runs."""
    prepared = [_prepare(model, layer, channels, settings) for layer, channels in requests]
    capacity = (
        images_per_pass
        if images_per_pass is not None
        else pass_capacity(model, settings.batch, settings.size)
    )
    left = {index: len(one.parts) for index, one in enumerate(prepared)}
    yield from ((index, []) for index, count in left.items() if not count)
    results: dict[int, list[RenderResult]] = {}
    for layer in dict.fromkeys(one.layer for one in prepared):
        members = [index for index, one in enumerate(prepared) if one.layer == layer]
        owners = [(index, part) for index in members for part in prepared[index].parts]
        sizes = [len(chunk) for index in members for chunk in prepared[index].slots]
        for group in _passes(sizes, capacity):
            done = _render(model, [owners[i][1] for i in group], settings)
            for i, result in zip(group, done, strict=True):
                owner = owners[i][0]
                results.setdefault(owner, []).append(result)
                left[owner] -= 1
                if not left[owner]:
                    yield owner, _rows(prepared[owner], results.pop(owner))


def random_directions(model: LoadedModel, layer: str, n: int, seed: int) -> torch.Tensor:
    """``n`` seeded random unit vectors (n, C) in the activation space of ``layer``.

    Pure: the same (model layer width, n, seed) always gives the same vectors, so dataset
    examples can be scored along exactly the directions that were rendered.
    """
    return obj.random_unit_vectors(model.channels(layer), n, seed)


def render_directions(
    model: LoadedModel,
    layer: str,
    n: int,
    settings: RenderSettings,
    seed: int,
    cosine_power: float = 0.0,
) -> list[RenderedImage]:
    """Feature visualizations of ``n`` random directions (channel -1, variant = direction id)."""
    layer = model.resolve_layer(layer)
    vectors = random_directions(model, layer, n, seed)
    labels = [f"random direction {i}" for i in range(n)]
    return render_vectors(model, layer, vectors, settings, labels, "direction", cosine_power=cosine_power)


def render_vectors(
    model: LoadedModel,
    layer: str,
    vectors: torch.Tensor,
    settings: RenderSettings,
    labels: Sequence[str],
    objective: str,
    cosine_power: float = 0.0,
    variants: Sequence[int] | None = None,
    match: bool = False,
) -> list[RenderedImage]:
    """Feature visualizations of the rows of ``vectors`` (n, C), ``settings.batch`` at a time.

    Each image goes along its row (`obj.direction` with ``cosine_power``) or, with ``match``, to
    its row (`obj.mean_match`: its activation averaged over positions made equal to the row).
    Rows are channel -1 with ``objective`` as their objective name and ``variants`` (default: the
    row index) as their variant. ``activation`` is the dot product of the final image's
    activations, averaged over positions, with the vector: a projection only for a unit vector
    (random directions), not for an activation atlas's cell means.
    """
    layer = model.resolve_layer(layer)
    variants = list(range(len(vectors))) if variants is None else list(variants)
    rows: list[RenderedImage] = []
    for index, start in enumerate(range(0, len(vectors), settings.batch)):
        chunk = vectors[start : start + settings.batch].float()
        names = list(labels[start : start + len(chunk)])
        result = render_objective(
            model,
            obj.mean_match(layer, chunk) if match else obj.direction(layer, chunk, cosine_power=cosine_power),
            settings,
            len(chunk),
            settings.seed + index,
            names,
        )
        mean = result.activations[layer].float().mean(dim=(2, 3))
        projections = (mean * chunk.to(mean.device)).sum(dim=1)
        for element, image in enumerate(to_uint8(result.images)):
            rows.append(
                RenderedImage(
                    layer=layer,
                    channel=-1,
                    objective=objective,
                    variant=variants[start + element],
                    label=names[element],
                    image=image,
                    activation=float(projections[element]),
                    loss=result.loss[:, element].tolist(),
                    vector=mean[element].cpu().numpy(),
                )
            )
    return rows


def render_pair(
    model: LoadedModel,
    layer: str,
    a: int,
    b: int,
    settings: RenderSettings,
    steps_between: int,
) -> list[RenderedImage]:
    """Neuron arithmetic (a + b jointly) and an interpolation from a to b, in one optimization.

    Element 0 maximizes channel a + channel b ("pair"); elements 1..steps_between score
    (1 - t) a + t b for t from 0 to 1 ("interpolation", variant = step), tied together by a small
    alignment term between neighbours and (with the Fourier parameterization) a spectrum shared
    by the whole batch.
    """
    if steps_between < 2:
        raise RenderError(f"an interpolation needs at least 2 steps, got {steps_between}")
    layer = model.resolve_layer(layer)
    _check_channels(model, layer, [a, b])
    size = 1 + steps_between
    row_elements = list(range(1, size))
    objective = (
        obj.channel(layer, a, batch=0)
        + obj.channel(layer, b, batch=0)
        + obj.interpolate(
            obj.channel(layer, a, batch=row_elements),
            obj.channel(layer, b, batch=row_elements),
            row_elements,
            size,
        )
        + ALIGNMENT_WEIGHT * obj.alignment(layer, row_elements)
    )
    labels = [f"{a} + {b}"] + [f"{a} to {b}, step {i + 1}/{steps_between}" for i in range(steps_between)]
    shared = settings.param == "fourier"  # only the Fourier basis has a shared part
    result = render_objective(model, objective, settings, size, settings.seed, labels, shared=shared)
    means = result.activations[layer].mean(dim=(2, 3))
    rows: list[RenderedImage] = []
    for element, image in enumerate(to_uint8(result.images)):
        rows.append(
            RenderedImage(
                layer=layer,
                channel=a,
                channel_b=b,
                objective="pair" if element == 0 else "interpolation",
                variant=max(element - 1, 0),
                label=labels[element],
                image=image,
                activation=float(means[element, a]),
                loss=result.loss[:, element].tolist(),
            )
        )
    return rows
