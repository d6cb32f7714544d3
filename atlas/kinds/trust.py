"""Trust units: does a picture excite its unit the way the unit's own natural images do?

A render unit's quality record judges its pictures alone. Two questions need the dataset, so they
wait until a layer's render and examples units are stored, and then a trust unit per render chunk
answers them for each channel's main picture (`channel`, else `neuron`, else the first image of
the diversity set), against the channel's top dataset examples:

- **How much of its activation do the natural images keep under the check set?** The top
  examples, resized to the render size, go through the same held-out checks as the pictures
  (`atlas.quality.checkset`). Some channels lose activation under any resize, natural or not (a
  scale-selective channel); the site divides a picture's share by its examples' share, so natural
  images set the bar for what a channel tolerates.
- **Does the picture take the path natural images take?** (Geirhos et al. 2023, "Don't trust
  your eyes".) Each image's pattern in a few layers below the unit (every channel's mean, weighted
  by where the unit fires in the image, standardized over random dataset images) is compared, by
  cosine, with the mean pattern of the channel's top examples. Random dataset images give the
  low bar, the top examples themselves (each against the others) the high one: a picture no
  closer to the top examples' path than a random photo reaches its activation some other way,
  e.g. through a circuit natural images never trigger.

The `trust` table has one row per channel (docs/STORE.md).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.core.schema import TRUST_SCHEMA, keyed_table
from atlas.data.source import ImageSource
from atlas.kinds.context import UnitFailed, WorkerContext
from atlas.models import LoadedModel
from atlas.optvis import objectives as obj
from atlas.plan.kinds import Speed, register_kind
from atlas.plan.spec import JobSpec
from atlas.plan.units import Unit, make_unit
from atlas.plan.work import Work
from atlas.quality.checkset import check_activations
from atlas.quality.thresholds import main_pictures
from atlas.store.store import Store

REFERENCES = 5  # top dataset examples per channel: what natural images of the unit look like
BASELINE = 24  # random dataset images: the standardization and the baseline of the path check
LOWER_LAYERS = 3  # layers below the unit whose activation pattern is compared
STD_FLOOR = 0.05  # a lower channel's spread over the random images: at least this share of the median
CLIP = 6.0  # standardized scores beyond this many spreads count as this many


@dataclass(frozen=True)
class TrustWork(Work):
    """Judge a render unit's main pictures against its channels' top examples."""

    kind: ClassVar[str] = "trust"
    version: ClassVar[str] = "2"  # bump when its result changes for the same inputs
    render: str  # the render unit's key
    examples: str  # the examples unit's key (the same channels)
    size: int  # the pictures' side: examples are checked at it
    references: int
    baseline: tuple[str, ...]  # the random dataset images, by source id
    lower: tuple[str, ...]  # the layers below the unit that the path check reads


@dataclass(frozen=True)
class TrustInputs:
    """What the driver reads from the store for a trust unit: each channel's main picture (PNG)
    and the source ids of its top examples."""

    pictures: dict[int, bytes]
    top: dict[int, list[str]]


def lower_layers(model: LoadedModel, layer: str, count: int = LOWER_LAYERS) -> tuple[str, ...]:
    """Up to `count` layers evenly spread over those before `layer` in forward order (a
    dictionary or class-token layer counts as the layer it reads)."""
    base = layer.split("@")[0]
    names = [info.name for info in model.layers()]
    below = names[: names.index(base)] if base in names else []
    if len(below) <= count:
        return tuple(below)
    return tuple(below[round((i + 1) * len(below) / (count + 1)) - 1] for i in range(count))


def baseline_ids(source: ImageSource, count: int = BASELINE) -> tuple[str, ...]:
    """`count` dataset images chosen by a hash of their ids: the same for every run and worker."""
    ranked = sorted(source.ids(), key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    return tuple(sorted(ranked[:count]))


def _load(source: ImageSource, ids: Sequence[str], size: int) -> tuple[torch.Tensor, list[str]]:
    """The images of `ids` that decode (a corrupt file, skipped by the scan too, is left out), at
    `size` x `size` in [0, 1], and their ids."""
    pixels, kept = [], []
    for source_id, decoded in source.load_many(list(ids)):
        if decoded.image is not None:
            pixels.append(np.asarray(decoded.image.convert("RGB").resize((size, size), Image.BILINEAR)))
            kept.append(source_id)
    if not pixels:
        return torch.zeros(0, 3, size, size), kept
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255), kept


def _decode(png: bytes) -> torch.Tensor:
    return (
        torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).copy())
        .permute(2, 0, 1)
        .float()
        / 255
    )


@torch.no_grad()
def patterns(
    model: LoadedModel, images: torch.Tensor, layers: Sequence[str], layer: str, channels: Sequence[int]
) -> torch.Tensor:
    """(B, K, D): for each image and each of the K `channels` of `layer`, every channel's mean
    in each of `layers` (concatenated), weighted by where the channel is active in that image (its
    positive part, resized to the lower layer's grid; uniform where it is nowhere active): what
    the layers below looked like where the unit fired."""
    rows = []
    for start in range(0, len(images), 32):
        outputs = model.activations(images[start : start + 32].to(model.device), [*layers, layer])
        fired = outputs[layer][:, list(channels)].float().clamp_min(0)  # (b, K, h, w)
        parts = []
        for name in layers:
            lower = outputs[name].float()
            weights = F.interpolate(fired, size=lower.shape[-2:], mode="bilinear", align_corners=False)
            total = weights.sum(dim=(2, 3), keepdim=True)
            uniform = torch.full_like(weights, 1 / weights[0, 0].numel())
            weights = torch.where(total > 0, weights / total.clamp_min(1e-12), uniform)
            parts.append(torch.einsum("bkhw,bchw->bkc", weights, lower))
        rows.append(torch.cat(parts, dim=2).cpu())
    return torch.cat(rows)


def _cosines(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (rows @ target) / (rows.norm(dim=-1) * target.norm()).clamp_min(1e-12)


def path_scores(
    pictures: torch.Tensor, references: torch.Tensor, baseline: torch.Tensor
) -> tuple[float, float, float]:
    """Cosine similarities with the references' mean pattern, all standardized per dimension over
    the random images (spreads floored, scores clipped): (the pictures', the random images', the
    references' own, each against the mean of the others)."""
    mean, std = baseline.mean(dim=0), baseline.std(dim=0)
    # A channel almost constant on photos (dead, or silent on this dataset) would turn any change
    # into a huge score that swamps every other channel: its spread is floored, its scores clipped.
    std = std.clamp_min(STD_FLOOR * float(std.median()) + 1e-12)
    pictures, references, baseline = (
        (x - mean).div(std).clamp(-CLIP, CLIP) for x in (pictures, references, baseline)
    )
    target = references.mean(dim=0)
    picture = float(_cosines(pictures, target).mean())
    random = float(_cosines(baseline, target).mean())
    count = len(references)
    if count < 2:
        return picture, random, float("nan")
    others = (references.sum(dim=0, keepdim=True) - references) / (count - 1)
    own = (references * others).sum(dim=-1) / (references.norm(dim=-1) * others.norm(dim=-1)).clamp_min(1e-12)
    return picture, random, float(own.mean())


def _trust(ctx: WorkerContext, unit: Unit, work: TrustWork) -> dict[str, pa.Table]:
    inputs: TrustInputs = unit.inputs
    model, source = ctx.model, ctx.source()
    channels = [c for c in unit.channels if c in inputs.pictures and inputs.top.get(c)]
    if not channels:
        raise UnitFailed(f"trust {unit.layer}: no channel has both a picture and top examples")
    top = {c: inputs.top[c][: work.references] for c in channels}
    images, loaded = _load(source, list(dict.fromkeys(i for c in channels for i in top[c])), work.size)
    row_of = {source_id: row for row, source_id in enumerate(loaded)}
    pairs = [(c, row_of[i]) for c in channels for i in top[c] if i in row_of]  # two units may share one
    references = images[[row for _, row in pairs]]
    owners = [c for c, _ in pairs]
    channels = [c for c in channels if c in owners]
    if not channels:
        raise UnitFailed(f"trust {unit.layer}: none of the top examples could be loaded again")
    checked = check_activations(
        model, references, obj.channel(unit.layer, owners, batch=list(range(len(owners))))
    )
    kept = checked.robust()
    pictures = torch.stack([_decode(inputs.pictures[c]) for c in channels])
    columns: dict[str, list] = {name: [] for name in TRUST_SCHEMA.names if name != "unit_key"}
    if work.lower:
        base = patterns(model, _load(source, work.baseline, work.size)[0], work.lower, unit.layer, channels)
        refs = patterns(model, references, work.lower, unit.layer, channels)
        drawn = patterns(model, pictures, work.lower, unit.layer, channels)
    for index, channel in enumerate(channels):
        mine = [i for i, owner in enumerate(owners) if owner == channel]
        shares = kept[mine]
        shares = shares[torch.isfinite(shares)]
        scores = (None, None, None)
        if work.lower:
            scores = path_scores(drawn[index : index + 1, index], refs[mine, index], base[:, index])
        columns["layer"].append(unit.layer)
        columns["channel"].append(channel)
        columns["examples_robust"].append(float(shares.mean()) if len(shares) else None)
        for name, score in zip(("path", "path_baseline", "path_references"), scores, strict=True):
            columns[name].append(score)
    return {"trust": keyed_table(columns, TRUST_SCHEMA, unit.key)}


def main_images(render: pa.Table) -> dict[int, bytes]:
    """Channel -> its main picture (PNG) in a render unit's table."""
    rows = render.select(["channel", "objective", "variant", "image"]).to_pylist()
    return {channel: row["image"] for channel, row in main_pictures(rows).items()}


def top_examples(examples: pa.Table, references: int) -> dict[int, list[str]]:
    """Channel -> the source ids of its `references` best examples, by rank."""
    rows = [
        r
        for r in examples.select(["channel", "bucket", "rank", "source_id"]).to_pylist()
        if r["bucket"] == "max"
    ]
    top: dict[int, list[str]] = {}
    for row in sorted(rows, key=lambda r: r["rank"]):
        if row["rank"] < references and row["channel"] >= 0:
            top.setdefault(row["channel"], []).append(row["source_id"])
    return top


def trust_units(
    spec: JobSpec,
    digest: str,
    model: LoadedModel,
    source: ImageSource,
    renders: Sequence[Unit],
    examples: Sequence[Unit],
) -> list[Unit]:
    """One trust unit per stored render unit and stored examples unit that share channels, for
    those channels: a render unit of the same chunk as its examples unit gets one, a render unit
    of chosen channels (`visualize`, the densest features) one per examples unit it draws on."""
    holder = {(u.layer, c): u for u in examples for c in u.channels}
    baseline = baseline_ids(source)
    units = []
    for render in renders:
        shares: dict[str, tuple[Unit, list[int]]] = {}
        for channel in render.channels:
            matched = holder.get((render.layer, channel))
            if matched is not None:
                shares.setdefault(matched.key, (matched, []))[1].append(channel)
        lower = lower_layers(model, render.layer)
        for matched, channels in shares.values():
            work = TrustWork(render.key, matched.key, spec.render.size, REFERENCES, baseline, lower)
            units.append(make_unit(digest, render.layer, tuple(channels), work))
    return units


def _cost(unit: Unit, spec: JobSpec, speed: Speed) -> float:
    """Forward passes only, at scan speed: the check set (6 per reference image) and the patterns."""
    images = len(unit.channels) * (unit.work.references * 7 + 1) + len(unit.work.baseline)
    return images / speed.scan_images_per_s


register_kind(
    TrustWork, phase="stage", handler=_trust, cost=_cost, tables=("trust",), reads=("render", "examples")
)


def read_inputs(store: Store, unit: Unit) -> Unit:
    """The unit with its inputs read from the store: its render unit's main pictures and its
    examples unit's top source ids."""
    work: TrustWork = unit.work
    pictures = main_images(store.read_unit(work.render, "render"))
    top = top_examples(
        store.read_unit(work.examples, "examples", ["channel", "bucket", "rank", "source_id"]),
        work.references,
    )
    return replace(unit, inputs=TrustInputs(pictures, top))
