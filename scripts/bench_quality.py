"""Quality at equal steps: the article's claims about regularization and preconditioning, measured.

For each parameterization (pixel, Fourier, Fourier + colour decorrelation, MACO), with and
without the standard transforms, the same channels are rendered for the same number of steps
and scored by:
- activation: the channel's mean activation on the final image (no transforms), divided by the
  highest mean activation any dataset image (the demo photos, at the same size) reaches;
- high-frequency energy: the share of the image's spectral power above half the Nyquist
  frequency (the "enemy" of the article); the demo photos give the natural-image reference;
- steps to 90%: the first snapshot step at which the activation reaches 90% of its final value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from atlas.data.open import open_source
from atlas.data.source import model_view
from atlas.models import LoadedModel
from atlas.optvis import make_param, render
from atlas.optvis import objectives as obj
from atlas.quality import high_frequency_share


@dataclass(frozen=True)
class Variant:
    """One parameterization of the comparison."""

    label: str
    param: str
    decorrelate: bool


VARIANTS = (
    Variant("pixel", "pixel", False),
    Variant("Fourier", "fourier", False),
    Variant("Fourier + decorrelation", "fourier", True),
    Variant("MACO", "maco", False),
)


def steps_to_fraction(steps: Sequence[int], curve: torch.Tensor, fraction: float = 0.9) -> list[int]:
    """First step of ``steps`` where each column of ``curve`` (len(steps), B) reaches ``fraction``
    of its last value; the last step when it only gets there at the end."""
    target = fraction * curve[-1]
    first = []
    for column in range(curve.shape[1]):
        reached = (curve[:, column] >= target[column]).nonzero()
        first.append(int(steps[int(reached[0])]) if len(reached) else int(steps[-1]))
    return first


@torch.no_grad()
def dataset_reference(
    model: LoadedModel,
    layer: str,
    channels: Sequence[int],
    size: int,
    photos: int | None = None,
    batch_size: int = 32,
) -> dict[str, object]:
    """Best mean activation per channel over the demo photos at ``size`` px, and their HF share.

    ``photos`` limits the search to the first crops (smoke runs); None searches them all.
    """
    source = open_source("demo")
    ids = source.ids()[:photos]
    best = torch.full((len(channels),), -float("inf"))
    shares = []
    for start in range(0, len(ids), batch_size):
        good, _ = source.load_batch(ids[start : start + batch_size], draft_size=size)
        pixels = np.stack([np.asarray(model_view(image, size)) for _, image in good])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
        activations = model.activations(images.to(model.device), [layer])[layer]
        means = activations[:, list(channels)].mean(dim=(2, 3)).float().cpu()
        best = torch.maximum(best, means.max(dim=0).values)
        shares.append(high_frequency_share(images))
    return {
        "images": len(ids),
        "best_mean_activation": best.tolist(),
        "high_frequency_share": float(torch.cat(shares).median()),
    }


@torch.no_grad()
def _activation_curve(
    model: LoadedModel, layer: str, channels: Sequence[int], snapshots: dict[int, torch.Tensor]
) -> tuple[list[int], torch.Tensor]:
    steps = sorted(snapshots)
    rows = torch.arange(len(channels))
    curve = []
    for step in steps:
        activations = model.activations(snapshots[step].to(model.device), [layer])[layer].float().cpu()
        curve.append(activations[rows, list(channels)].mean(dim=(1, 2)))
    return steps, torch.stack(curve)


def quality(
    model: LoadedModel,
    layer: str,
    channels: Sequence[int],
    size: int,
    steps: int,
    every: int,
    lr: float = 0.05,
    seed: int = 0,
    photos: int | None = None,
) -> dict[str, object]:
    """Every variant with and without transforms: relative activation, HF share, steps to 90%."""
    reference = dataset_reference(model, layer, channels, size, photos)
    best = torch.tensor(reference["best_mean_activation"])
    objective = obj.channel(layer, list(channels), batch=list(range(len(channels))))
    snapshot_steps = tuple(range(every, steps + 1, every)) if every < steps else (steps,)
    if snapshot_steps[-1] != steps:
        snapshot_steps += (steps,)
    rows = []
    for variant in VARIANTS:
        for transforms in ("none", "standard"):
            param = make_param(variant.param, len(channels), size, seed=seed, decorrelate=variant.decorrelate)
            result = render(
                model,
                objective,
                param,
                steps=steps,
                lr=lr,
                transforms=transforms,
                seed=seed,
                snapshots=snapshot_steps,
            )
            recorded, curve = _activation_curve(model, layer, channels, result.snapshots)
            relative = curve[-1] / best
            shares = high_frequency_share(result.images)
            to_90 = steps_to_fraction(recorded, curve)
            rows.append(
                {
                    "param": variant.label,
                    "transforms": transforms,
                    "relative_activation": relative.tolist(),
                    "relative_activation_median": float(relative.median()),
                    "high_frequency_share": shares.tolist(),
                    "high_frequency_share_median": float(shares.median()),
                    "steps_to_90": to_90,
                    "steps_to_90_median": float(np.median(to_90)),
                }
            )
    return {
        "layer": layer,
        "channels": list(channels),
        "size": size,
        "steps": steps,
        "snapshot_every": every,
        "lr": lr,
        "dataset": reference,
        "rows": rows,
    }
