"""A tiny ViT and a tiny CNN, trained here to detect a planted pattern, held to the same evidence.

Each is trained for a few seconds to tell images holding a small checkerboard from images
without. Its detector unit (the hidden unit that separates the two best) must then (1) rank the
planted images first in a dataset-example scan, and (2) be excited more by its feature
visualization than by any dataset image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from atlas.data.open import open_source
from atlas.data.source import ShardRef
from atlas.kinds.examples import scan_shard
from atlas.models import LoadedModel, Preprocessing
from atlas.optvis.recipes import render_channels

SIZE = 32
PATCH = 8
PLANTED = 6
CLEAN = 26


def _images(count: int, planted: bool, generator: torch.Generator) -> torch.Tensor:
    """Blocky random colours; planted ones hold a 2-pixel checkerboard on one patch-aligned square."""
    coarse = torch.rand(count, 3, SIZE // 4, SIZE // 4, generator=generator) * 0.6 + 0.2
    images = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    if planted:
        yy, xx = torch.meshgrid(torch.arange(PATCH), torch.arange(PATCH), indexing="ij")
        board = ((yy // 2 + xx // 2) % 2).float()
        for image in images:
            top, left = (int(v) * PATCH for v in torch.randint(SIZE // PATCH, (2,), generator=generator))
            image[:, top : top + PATCH, left : left + PATCH] = board
    return images


def _train(module: nn.Module, seed: int) -> LoadedModel:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(80):
        x = torch.cat([_images(32, False, generator), _images(32, True, generator)])
        y = torch.cat([torch.zeros(32), torch.ones(32)]).long()
        loss = nn.functional.cross_entropy(module((x - 0.5) / 0.25), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return LoadedModel(
        "planted", module, Preprocessing(SIZE, mean=(0.5,) * 3, std=(0.25,) * 3, fixed_size=True)
    )


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=SIZE, patch_size=PATCH, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=2
    )


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    layer: str


CASES = {
    "vit": Case(_vit, "encoder.layers.encoder_layer_0.mlp.1"),  # MLP hidden units, tokens
    "cnn": Case(_cnn, "2"),  # the second convolution (before its ReLU), a (B, C, H, W) map
}


@dataclass
class Setting:
    steps: int = 64
    size: int = SIZE
    batch: int = 1
    lr: float = 0.05
    param: str = "maco"  # grey-started fourier/pixel stall on GELU units (BENCHMARKS.md)
    decorrelate: bool = True
    decay_power: float = 1.0
    transforms: str = "none"
    objectives: tuple[str, ...] = ("channel",)
    diversity: int = 2
    diversity_weight: float = 0.0
    seed: int = 0
    precision: str = "fp32"
    lr_schedule: str = "constant"
    coarse_fraction: float = 0.0  # maco has no resolution to change
    blur_weight: float = 0.0


def _detector(model: LoadedModel, layer: str) -> int:
    """The unit whose spatial maximum separates planted from clean training images the most."""
    generator = torch.Generator().manual_seed(99)
    with torch.no_grad():
        clean = model.activations(_images(64, False, generator), [layer])[layer].amax(dim=(2, 3))
        planted = model.activations(_images(64, True, generator), [layer])[layer].amax(dim=(2, 3))
    gap = planted.min(dim=0).values - clean.max(dim=0).values
    return int(gap.argmax())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    generator = torch.Generator().manual_seed(7)
    for kind, images in (
        ("clean", _images(CLEAN, False, generator)),
        ("planted", _images(PLANTED, True, generator)),
    ):
        for index, image in enumerate(images):
            pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(root / f"{kind}{index:02d}.png")
    return root


@pytest.mark.parametrize("kind", sorted(CASES))
def test_detector_unit_finds_the_planted_images_and_its_visualization_beats_them(
    kind: str, dataset: Path
) -> None:
    case = CASES[kind]
    model = _train(case.build(), seed=1)
    unit = _detector(model, case.layer)
    source = open_source(dataset)
    ids = tuple(source.ids())
    scan = scan_shard(model, [case.layer], source, ShardRef(0, ids), k=PLANTED, batch_size=16)
    top = {str(i) for i in scan.layers[case.layer].top.ids[unit]}
    assert top == {i for i in ids if i.startswith("planted")}

    rendered = render_channels(model, case.layer, [unit], Setting())[0]
    pixels = torch.stack(
        [torch.from_numpy(np.array(source.load(i))).permute(2, 0, 1).float() / 255 for i in ids]
    )
    with torch.no_grad():
        dataset_means = model.activations(pixels, [case.layer])[case.layer][:, unit].mean(dim=(1, 2))
    assert rendered.activation > float(dataset_means.max())


def spec_text(layer: str) -> str:
    return f'[model]\nname = "tiny-cnn"\n[[layers]]\nname = "{layer}"\n'


def test_a_token_layer_with_the_default_settings_pictures_its_detector(dataset: Path) -> None:
    """A job that writes no render settings renders a ViT's token layer with the recipe measured
    best for tokens (atlas.plan.units.TOKEN_RENDER), and its picture beats every dataset image;
    the same job's map layers keep the CNN defaults (and their content keys)."""
    from dataclasses import replace

    from atlas.plan.spec import parse_spec
    from atlas.plan.units import ModelFacts, render_for

    case = CASES["vit"]
    spec = parse_spec(spec_text(case.layer))
    facts = ModelFacts("digest", {case.layer: 64}, frozenset({case.layer}))
    settings = render_for(spec, facts, case.layer)
    assert (settings.param, settings.transforms) == ("maco", "vit")
    assert render_for(spec, ModelFacts("digest", {case.layer: 64}), case.layer) == spec.render  # a map layer
    written = parse_spec(f'{spec_text(case.layer)}[render]\nparam = "fourier"\n')
    assert render_for(written, facts, case.layer).param == "fourier"  # a written value stays

    model = _train(case.build(), seed=1)
    unit = _detector(model, case.layer)
    settings = replace(
        settings, size=SIZE, objectives=("channel",), batch=1
    )  # the model's size (follow_model)
    rendered = render_channels(model, case.layer, [unit], settings)[0]
    source = open_source(dataset)
    pixels = torch.stack(
        [torch.from_numpy(np.array(source.load(i))).permute(2, 0, 1).float() / 255 for i in source.ids()]
    )
    with torch.no_grad():
        dataset_means = model.activations(pixels, [case.layer])[case.layer][:, unit].mean(dim=(1, 2))
    assert rendered.activation > float(dataset_means.max())
