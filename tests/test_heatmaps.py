"""ViT dataset examples: the whole image with the unit's per-patch heatmap, max where it reads.

The unit reads one patch and is zero on every other, so top examples must glow on that patch
and bottom examples everywhere but there.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from atlas.data.open import open_source
from atlas.data.source import ShardRef, model_view
from atlas.kinds.examples import finalize_layer, heatmaps, scan_shard
from atlas.models import LoadedModel, Preprocessing

SIZE = 32
PATCH = 8
GRID = SIZE // PATCH
READ = (1, 2)  # (row, column) of the only patch unit 0 reads
CROP = 64


class PatchReader(nn.Module):
    """Tokens (class token + 4 x 4 patches, 3 features); feature 0 is patch READ's brightness
    and zero on every other patch, so its heatmap must peak at READ whatever the image."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 3, PATCH, stride=PATCH)
        nn.init.constant_(self.embed.weight, 1.0 / (3 * PATCH * PATCH))
        nn.init.constant_(self.embed.bias, 10.0)  # positive whatever the normalized pixels
        mask = torch.zeros(GRID * GRID, 3)
        mask[:, 1:] = 1.0
        mask[READ[0] * GRID + READ[1], 0] = 1.0
        self.register_buffer("mask", mask)
        self.block = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2) * self.mask
        tokens = self.block(torch.cat([patches.new_zeros(len(x), 1, 3), patches], dim=1))
        return tokens[:, 0]


def test_a_unit_reading_one_patch_has_its_heatmap_maximum_on_that_patch(tmp_path) -> None:
    generator = np.random.default_rng(0)
    for index in range(6):
        pixels = generator.integers(0, 256, (48, 40, 3), dtype=np.uint8)  # not square: center crop
        Image.fromarray(pixels).save(tmp_path / f"img{index}.png")
    model = LoadedModel("reader", PatchReader().eval(), Preprocessing(SIZE, fixed_size=True))
    source = open_source(tmp_path)
    ids = tuple(source.ids())
    partial = scan_shard(model, ["block"], source, ShardRef(0, ids), k=3)
    assert model.layout("block").prefix == 1
    examples, _ = finalize_layer(model, "block", partial, source, CROP, 16, "key", channels=[0])
    assert len(examples) > 0
    for row in examples.to_pylist():
        if row["bucket"] == "max":
            assert (row["y"], row["x"]) == READ  # the scan's position is the patch, too
        drawn = np.asarray(Image.open(io.BytesIO(row["crop"])), dtype=np.float64)
        plain = np.asarray(
            model_view(source.load(row["source_id"]), SIZE).resize((CROP, CROP), Image.Resampling.BICUBIC),
            dtype=np.float64,
        )
        assert drawn.shape == (CROP, CROP, 3)  # the whole image, not a crop
        tint = np.abs(drawn - plain).sum(axis=2)
        side = CROP // GRID
        per_patch = tint.reshape(GRID, side, GRID, side).mean(axis=(1, 3))
        if row["bucket"] in ("max", "slightly_positive"):  # hottest where the unit is highest
            assert np.unravel_index(per_patch.argmax(), per_patch.shape) == READ
        else:  # bottom examples: hottest where it is lowest, so the one patch it reads stays clear
            assert np.unravel_index(per_patch.argmin(), per_patch.shape) == READ


def test_class_token_and_direction_layers_keep_crops() -> None:
    model = LoadedModel("reader", PatchReader().eval(), Preprocessing(SIZE, fixed_size=True))
    assert heatmaps.wanted(model, "block")
    assert not heatmaps.wanted(model, "block@cls") and not heatmaps.wanted(model, "block@direction")
