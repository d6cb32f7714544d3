"""Probe statistics: one forward pass of a checkpoint over a fixed probe set, every layer at once.

Per channel it keeps what the timeline plots (max, mean, fraction of positions active), what
decides a dead unit (standard deviation over every probe position) and a signature (the
activations at fixed sampled positions of every probe image) that matching and CKA compare
across checkpoints. The positions are drawn from the seed, so every checkpoint is sampled alike.

Token layers (ViTs) are read per token position, like a map's spatial positions: the model
hands back the patch tokens as a (C, H, W) grid (atlas.models.layout) and the class token as
its own 1 x 1 layer, `<layer>@cls`. A per-image mean over tokens would hide what matching needs:
a feature that fires on one patch and one that fires weakly everywhere would look alike, and a
probe set of N images would give N samples per unit instead of N x positions. The class token
stays out of the patch statistics because its role (a summary of the image) differs from every
patch's. Token outputs whose patch grid is unknown are read with every token as one position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from atlas.core.schema import PROBE_SCHEMA, keyed_table
from atlas.data.source import model_view
from atlas.kinds.timeline.match import dead_units
from atlas.plan.kinds import register_kind
from atlas.plan.work import Work

if TYPE_CHECKING:
    from atlas.kinds.context import WorkerContext
    from atlas.models import LoadedModel
    from atlas.plan.units import Unit


@dataclass(frozen=True)
class ProbeWork(Work):
    """A checkpoint's activation statistics and signatures on the timeline's probe set (atlas.kinds.timeline)."""

    kind: ClassVar[str] = "probe"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    layers: tuple[str, ...]
    positions: int  # sampled positions per probe image in each signature
    seed: int
    data: str  # fingerprint of the probe images


PROBE_BATCH = 16


def probe_ids(ids: Sequence[str], count: int) -> tuple[str, ...]:
    """`count` ids spread evenly over the source: the same probe set for every checkpoint."""
    if count >= len(ids):
        return tuple(ids)
    picks = np.linspace(0, len(ids) - 1, count).round().astype(int)
    return tuple(ids[i] for i in picks)


def sample_positions(height: int, width: int, count: int, seed: int) -> np.ndarray:
    """Flat indices of `count` positions of an H x W map, the same for every checkpoint."""
    total = height * width
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=min(count, total), replace=False))


class _LayerStats:
    """Running per-channel statistics of one layer; shifted sums keep a constant channel exact."""

    def __init__(self) -> None:
        self.shift: np.ndarray | None = None
        self.total = self.squares = self.active = self.maximum = None
        self.count = 0
        self.signature: list[np.ndarray] = []

    def add(self, act: np.ndarray, positions: np.ndarray) -> None:
        flat = act.reshape(act.shape[0], act.shape[1], -1).astype(np.float64)  # B, C, HW
        if self.shift is None:
            self.shift = flat[0, :, 0].copy()
            channels = flat.shape[1]
            self.total, self.squares, self.active = (np.zeros(channels) for _ in range(3))
            self.maximum = np.full(channels, -np.inf)
        centered = flat - self.shift[None, :, None]
        self.total += centered.sum(axis=(0, 2))
        self.squares += np.square(centered).sum(axis=(0, 2))
        self.active += (flat > 0).sum(axis=(0, 2))
        self.maximum = np.maximum(self.maximum, flat.max(axis=(0, 2)))
        self.count += flat.shape[0] * flat.shape[2]
        self.signature.append(flat[:, :, positions].transpose(1, 0, 2).reshape(flat.shape[1], -1))

    def table(self, layer: str, unit_key: str) -> pa.Table:
        mean_c = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - np.square(mean_c), 0.0))
        mean = mean_c + self.shift
        channels = len(mean)
        signature = np.concatenate(self.signature, axis=1).astype(np.float32)
        columns = {
            "layer": [layer] * channels,
            "channel": np.arange(channels, dtype=np.int32),
            "max": self.maximum.astype(np.float32),
            "mean": mean.astype(np.float32),
            "std": std.astype(np.float32),
            "active": (self.active / self.count).astype(np.float32),
            "dead": dead_units(std, mean),
            "signature": list(signature),
        }
        return keyed_table(columns, PROBE_SCHEMA, unit_key)


def probe_model(
    model: LoadedModel,
    layers: Sequence[str],
    images: torch.Tensor,
    positions: int,
    seed: int,
    unit_key: str = "",
) -> pa.Table:
    """The `probe` table of `layers` for [0, 1] RGB probe images (N, 3, S, S)."""
    stats = {layer: _LayerStats() for layer in layers}
    picks: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for start in range(0, images.shape[0], PROBE_BATCH):
            batch = images[start : start + PROBE_BATCH].to(model.device)
            outputs = model.activations(batch, list(layers))
            for layer in layers:
                act = outputs[model.resolve_layer(layer)].float().cpu().numpy()
                if act.ndim == 2:  # (B, C): one position per image
                    act = act[:, :, None, None]
                elif act.ndim == 3:  # (B, N, C) tokens without a patch grid: each token a position
                    act = act.transpose(0, 2, 1)[..., None]
                if act.ndim != 4:
                    raise ValueError(
                        f"layer {layer!r} outputs shape {tuple(act.shape)}: timelines read (B, C, H, W) "
                        "maps, (B, N, C) tokens or (B, C) vectors; choose another layer"
                    )
                if layer not in picks:
                    picks[layer] = sample_positions(act.shape[2], act.shape[3], positions, seed)
                stats[layer].add(act, picks[layer])
    return pa.concat_tables([stats[layer].table(layer, unit_key) for layer in layers])


def load_probe_images(source: object, ids: Sequence[str], size: int) -> torch.Tensor:
    """The probe images at the model's input size, in [0, 1], in the order of `ids`."""
    good, _ = source.load_batch(ids)
    by_id = dict(good)
    pixels = np.stack([np.asarray(model_view(by_id[i], size)) for i in ids if i in by_id])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0


def run_probe(ctx: WorkerContext, unit: Unit, work: ProbeWork) -> dict[str, pa.Table]:
    """The probe unit's handler: the checkpoint's statistics on the probe set."""
    images = load_probe_images(ctx.source(), unit.inputs, ctx.model.input_size)
    return {"probe": probe_model(ctx.model, work.layers, images, work.positions, work.seed, unit.key)}


def _probe_seconds(unit: Unit, spec: Any, speed: Any) -> float:
    return len(unit.inputs) / speed.scan_images_per_s  # a forward pass per probe image


register_kind(ProbeWork, phase="stage", handler=run_probe, cost=_probe_seconds, tables=("probe",))
