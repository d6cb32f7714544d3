"""The held-out check set: transformations the optimization never sees, outside its training range.

Rendering's transform presets (atlas/optvis/transforms.py) jitter by at most 32 + 16 px of a
128 px render (the default ``wider`` preset, whose pad and jitter scale with the render size, so
at most 19% of the image either way), scale by 0.55-1.6 at the widest and rotate by at most 20
degrees, always on the render-size image, in float, without compression: the resizes below
(x1.75 and x0.5), the 30 degree rotation and the quarter shift stay outside that range. A picture that shows what a unit responds to keeps most of its activation under
changes beyond all of those; an adversarial pattern tuned to the exact pixels does not. Each
check here is deterministic, so a record computed today is comparable with one computed later.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.models import LoadedModel
from atlas.optvis.objectives import Objective, StepState
from atlas.optvis.transforms import compose, random_rotate

HELD_OUT_DEGREES = 30.0  # 1.5 times the widest training rotation (20 degrees)
JPEG_QUALITY = 75
SHIFT_FRACTION = 0.25  # cyclic, so no content is lost; training jitter moves at most 24 px (19%), never wraps


def _resize(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    return apply


def _shift(images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    return torch.roll(
        images, shifts=(round(height * SHIFT_FRACTION), round(width * SHIFT_FRACTION)), dims=(2, 3)
    )


def _rotate(images: torch.Tensor) -> torch.Tensor:
    # One fixed angle: the generator is consumed but cannot change the result.
    return compose([random_rotate([HELD_OUT_DEGREES])])(images, torch.Generator().manual_seed(0))


def _jpeg(images: torch.Tensor) -> torch.Tensor:
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div(255).to(images.device)


@dataclass(frozen=True)
class Check:
    """One held-out transformation of a batch of [0, 1] images (B, 3, H, W)."""

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]


CHECK_SET: tuple[Check, ...] = (
    Check("resize_224", _resize(224)),
    Check("resize_64", _resize(64)),
    Check("shift_quarter", _shift),
    Check(f"rotate_{HELD_OUT_DEGREES:g}", _rotate),
    Check(f"jpeg_{JPEG_QUALITY}", _jpeg),
)


@dataclass(frozen=True)
class CheckResult:
    """The objective's score per image as rendered and under each check of the set."""

    rendered: torch.Tensor  # (B,)
    under: dict[str, torch.Tensor]  # check name -> (B,)

    def ratios(self) -> dict[str, torch.Tensor]:
        """Score under a check over the score as rendered; NaN where the rendered score is not
        positive (then no share of it can be kept)."""
        base = torch.where(self.rendered > 0, self.rendered, torch.nan)
        return {name: scores / base for name, scores in self.under.items()}

    def robust(self) -> torch.Tensor:
        """Mean share of the rendered score kept over the check set (B,): 1 keeps it all."""
        return torch.stack(list(self.ratios().values())).mean(dim=0)

    def worst(self) -> torch.Tensor:
        """The smallest share kept by any one check (B,)."""
        return torch.stack(list(self.ratios().values())).min(dim=0).values


def quantized(images: torch.Tensor) -> torch.Tensor:
    """Images as the store keeps them (8 bits per channel), so the record describes the PNG."""
    return (images.clamp(0, 1) * 255).round() / 255


@torch.no_grad()
def check_activations(
    model: LoadedModel, images: torch.Tensor, objective: Objective, checks: tuple[Check, ...] = CHECK_SET
) -> CheckResult:
    """Score ``images`` (B, 3, H, W in [0, 1]) with ``objective`` as they are and under ``checks``.

    The objective is the one the images were optimized for (e.g. ``channel(layer, c, batch=i)``
    per element), so a ratio says how much of what the optimizer reached survives the change.
    """
    layers = sorted(objective.layers)
    images = quantized(images.float()).to(model.device)

    def score(batch: torch.Tensor) -> torch.Tensor:
        activations = model.activations(batch, layers)
        return objective(StepState(activations, batch)).float().cpu()

    return CheckResult(score(images), {check.name: score(check.apply(images)) for check in checks})
