"""A model with known structure for activation-atlas icons: four image families, a centred layer.

`family_images` draws seeded 32 x 32 images of four families (red disks, green stripes, blue
checkerboards, grey noise). `family_model` trains a small CNN to tell them apart in a few seconds
on CPU; its third convolution is followed by a batch norm without affine parameters, so the
atlas layer (`FAMILY_LAYER`, the batch norm's output) is centred and signed, as in most real
networks. `family_cells` lays the collected vectors out (PCA, a cheap stand-in for UMAP) on a
4 x 4 grid (8 to 11 kept cells, two or three per family), and `flat_colour_images` gives the baseline an icon must beat: each cell's mean colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from atlas.kinds.actatlas.collect import VectorSample
from atlas.kinds.actatlas.grid import grid
from atlas.models import LoadedModel
from atlas.models.loaded import freeze
from atlas.models.registry import Preprocessing

FAMILIES = ("red disks", "green stripes", "blue checkerboards", "grey noise")
FAMILY_LAYER = "6"  # the batch norm after the third convolution: a centred (signed) layer
SIDE = 32


def _disks(rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    image = np.full((SIDE, SIDE, 3), rng.uniform(0.0, 0.3), np.float32)
    for _ in range(rng.integers(4, 8)):
        cy, cx, r = rng.uniform(0, SIDE), rng.uniform(0, SIDE), rng.uniform(4, 9)
        inside = (ys - cy) ** 2 + (xs - cx) ** 2 < r * r
        image[inside] = (rng.uniform(0.7, 1.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2))
    return image


def _stripes(rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 10)
    wave = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period) > 0
    image = np.zeros((SIDE, SIDE, 3), np.float32)
    image[..., 1] = np.where(wave, rng.uniform(0.7, 1.0), rng.uniform(0.0, 0.3))
    image[..., 0] = image[..., 2] = rng.uniform(0.0, 0.2)
    return image


def _checkerboard(rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    cell = rng.integers(3, 8)
    on = ((ys + rng.integers(cell)) // cell + (xs + rng.integers(cell)) // cell) % 2 == 0
    image = np.zeros((SIDE, SIDE, 3), np.float32)
    image[..., 2] = np.where(on, rng.uniform(0.7, 1.0), rng.uniform(0.0, 0.3))
    image[..., 0] = image[..., 1] = np.where(on, rng.uniform(0.0, 0.2), 0.0)
    return image


def _noise(rng: np.random.Generator) -> np.ndarray:
    grey = np.clip(rng.normal(0.5, rng.uniform(0.1, 0.3), (SIDE, SIDE, 1)), 0, 1)
    return np.repeat(grey, 3, axis=2).astype(np.float32)


_DRAW = (_disks, _stripes, _checkerboard, _noise)


def family_images(per_family: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(4 * per_family, 3, 32, 32) images in [0, 1] and their family labels, interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(FAMILIES)), per_family)
    pixels = np.stack([_DRAW[label](rng) for label in labels])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def family_network() -> nn.Module:
    """The four-family CNN, untrained, declaring its input (32 px in [0, 1]): what a job spec loads
    as `module:families:family_network` with the trained weights as its checkpoint."""
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),  # 16 x 16
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 8 x 8
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),  # 4 x 4
        nn.ReLU(),
        nn.BatchNorm2d(32, affine=False),  # FAMILY_LAYER: centred per channel, signed
        nn.Conv2d(32, 32, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, len(FAMILIES)),
    )
    module.input_size = SIDE
    module.input_mean, module.input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return module


def family_model(steps: int = 150, seed: int = 0) -> LoadedModel:
    """The four-family CNN, trained `steps` Adam steps (seeded; about 3 s on one CPU core)."""
    torch.manual_seed(seed)
    module = family_network()
    images, labels = family_images(64, seed=seed + 1)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(steps):
        batch = torch.randint(len(images), (64,), generator=generator)
        loss = nn.functional.cross_entropy(module(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # running statistics of the whole training set: the layer is centred
        module[6].reset_running_stats()
        module[6].momentum = None
        module(images)
    return freeze("families", module, Preprocessing(SIDE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), fold=False)


@dataclass(frozen=True)
class FamilyCells:
    """The atlas of the family model's layer on held-out images: a grid's kept cells."""

    images: torch.Tensor  # (n, 3, 32, 32) the sampled images
    labels: np.ndarray  # (n,) their families
    vectors: np.ndarray  # (n, C) one activation vector per image (hash-chosen position)
    cell: np.ndarray  # (n,) each image's cell
    kept: np.ndarray  # (k,) kept cell ids
    means: np.ndarray  # (k, C) each kept cell's mean vector

    def purity(self) -> float:
        """Fraction of images whose family is their cell's majority family."""
        hits = sum(np.bincount(self.labels[self.cell == c]).max() for c in self.kept)
        return float(hits / np.isin(self.cell, self.kept).sum())


def family_cells(model: LoadedModel, per_family: int = 96, size: int = 4, seed: int = 7) -> FamilyCells:
    """Collect one vector per held-out image at `FAMILY_LAYER`, lay out by PCA, bin on a grid."""
    images, labels = family_images(per_family, seed)
    ids = [f"family{i:04d}.png" for i in range(len(images))]
    with torch.no_grad():
        output = model.activations(images, [FAMILY_LAYER])
    sample = VectorSample.from_batch(ids, output, size=len(ids))
    order = [ids.index(str(name)) for name in sample.ids]
    vectors = sample.vectors[FAMILY_LAYER]
    centred = vectors - vectors.mean(axis=0)
    coords = np.linalg.svd(centred, full_matrices=False)[0][:, :2]
    cells = grid(coords, vectors, size, min_count=3)
    return FamilyCells(images[order], labels.numpy()[order], vectors, cells.cell, cells.kept, cells.means)


def flat_colour_images(cells: FamilyCells) -> torch.Tensor:
    """(k, 3, 32, 32): one flat image per kept cell, of the mean colour of the cell's images."""
    colours = [cells.images[torch.from_numpy(cells.cell == c)].mean(dim=(0, 2, 3)) for c in cells.kept]
    return torch.stack(colours)[:, :, None, None].expand(-1, -1, SIDE, SIDE).contiguous()


def layer_vectors(model: LoadedModel, images: torch.Tensor) -> np.ndarray:
    """(n, C) each image's activation at `FAMILY_LAYER`, averaged over positions."""
    with torch.no_grad():
        return model.activations(images, [FAMILY_LAYER])[FAMILY_LAYER].mean(dim=(2, 3)).numpy()
