"""Checkpoints and photos for timeline tests: tiny-cnn trained a few steps, random photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from atlas.models import LoadedModel
from atlas.models.registry import Preprocessing, build


def train_checkpoints(folder: Path, epochs: int, steps: int = 2, batch: int = 8) -> list[Path]:
    """tiny-cnn trained `steps` steps per epoch on synthetic images (class = the brightest colour)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module, _ = build("tiny-cnn", "none")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    paths = []
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            images = torch.rand(batch, 3, 64, 64)
            labels = images.mean(dim=(2, 3)).argmax(dim=1)
            loss = torch.nn.functional.cross_entropy(module(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        path = folder / f"epoch-{epoch}.pt"
        torch.save(module.state_dict(), path)
        paths.append(path)
    return paths


def write_photos(folder: Path, count: int = 8) -> Path:
    """A tiny examples source: the probe set and, for the scanned checkpoints, the dataset."""
    if folder.is_dir():  # rewritten photos would be new data: every scan and probe again
        return folder
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def small_vit() -> LoadedModel:
    """A two-block torchvision ViT at 32 px with seeded random weights, frozen, as a LoadedModel."""
    torch.manual_seed(0)
    module = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=64, num_classes=5
    )
    for param in module.parameters():
        param.requires_grad_(False)
    return LoadedModel("small-vit", module.eval(), Preprocessing(32))
