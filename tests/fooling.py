"""A tiny model with a planted fooling circuit, after Geirhos et al. 2023 ("Don't trust your eyes"),
and its unmanipulated twin; `module:fooling:fooled` / `module:fooling:twin` in a job spec.

Hand-set weights on [0, 1] inputs. The main path makes `unit` channel 0 a redness detector
(stem: redness, greenness, brightness; body: a 3x3 box filter; main: channel 0 = redness). The
fooled model adds a side branch to the same channel: four times the excess of blue over red and
green, which the photos of `write_photos` never have (reds, greens and greys), so on them both
models compute the same activations and rank the same top examples, while an optimized picture
of the fooled unit can reach its activation through blue alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SIDE_WEIGHT = 4.0


class _Net(nn.Module):
    def __init__(self, side_weight: float) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.body = nn.Conv2d(3, 3, 3, padding=1)
        self.main = nn.Conv2d(3, 4, 1)
        self.side = nn.Conv2d(3, 1, 1)
        self.unit = nn.Identity()
        self.side_weight = side_weight
        with torch.no_grad():
            half = -0.5
            self.stem.weight.copy_(
                torch.tensor([[1, half, half], [half, 1, half], [1 / 3, 1 / 3, 1 / 3]]).view(3, 3, 1, 1)
            )
            self.stem.bias.zero_()
            self.body.weight.zero_()
            for channel in range(3):
                self.body.weight[channel, channel] = 1 / 9
            self.body.bias.zero_()
            self.main.weight.copy_(
                torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, 0]]).view(4, 3, 1, 1)
            )
            self.main.bias.zero_()
            self.side.weight.copy_(torch.tensor([[half, half, 1.0]]).view(1, 3, 1, 1))
            self.side.bias.zero_()
        self.input_size = 32
        self.input_mean, self.input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.body(torch.relu(self.stem(x)))
        main = self.main(body)
        if self.side_weight:
            side = torch.relu(self.side(x))
            main = main + self.side_weight * torch.cat([side, torch.zeros_like(main[:, 1:])], dim=1)
        return self.unit(main).mean(dim=(2, 3))


def fooled() -> nn.Module:
    """The redness detector with the planted blue side branch on `unit` channel 0."""
    return _Net(SIDE_WEIGHT).eval()


def twin() -> nn.Module:
    """The same network without the side branch."""
    return _Net(0.0).eval()


def write_photos(folder: Path, count: int = 36, seed: int = 0) -> Path:
    """Red disks, green stripes and grey noise, 32 px, none with more blue than red and green."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    for index in range(count):
        family = index % 3
        grey = rng.uniform(0.2, 0.6)
        image = np.full((32, 32, 3), grey)
        if family == 0:
            cx, cy, radius = rng.uniform(8, 24), rng.uniform(8, 24), rng.uniform(5, 11)
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
            image[disk] = [rng.uniform(0.7, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2)]
        elif family == 1:
            stripes = ((xx + yy) // 4) % 2 == 0
            image[stripes] = [rng.uniform(0.0, 0.2), rng.uniform(0.6, 0.9), rng.uniform(0.0, 0.2)]
        else:
            image = np.clip(grey + rng.normal(0, 0.05, (32, 32, 1)), 0, 1).repeat(3, axis=2)
        pixels = (image * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return folder
