"""Timelines on a tiny ViT: token layers are probed per token position, matched and compared by CKA."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import torch
import torchvision

from atlas.kinds.timeline.compare import compare
from atlas.kinds.timeline.probe import probe_model
from atlas.models import freeze
from atlas.models.registry import Preprocessing

BLOCK = "encoder.layers.encoder_layer_0"
HIDDEN = f"{BLOCK}.mlp.1"  # the MLP's hidden units after GELU: (B, 1 + 16 patches, 64) tokens
CLS = "encoder.layers.encoder_layer_1@cls"
IMAGES, POSITIONS = 10, 6


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=64, num_classes=5
    ).eval()


def _probe(module: torch.nn.Module, layers: list[str]) -> pa.Table:
    model = freeze("vit", copy.deepcopy(module), Preprocessing(input_size=32))
    images = torch.rand(IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return probe_model(model, layers, images, positions=POSITIONS, seed=0, unit_key="probe-vit")


def _layer(table: pa.Table, layer: str) -> list[dict]:
    return [row for row in table.to_pylist() if row["layer"] == layer]


def test_token_layers_are_read_per_patch_position_and_the_class_token_apart() -> None:
    probe = _probe(_vit(), [HIDDEN, CLS])
    hidden, cls = _layer(probe, HIDDEN), _layer(probe, CLS)
    assert len(hidden) == 64 and len(cls) == 16
    # sampled patch positions of every image; the class token is one position per image
    assert all(len(row["signature"]) == IMAGES * POSITIONS for row in hidden)
    assert all(len(row["signature"]) == IMAGES for row in cls)
    # the fraction active counts the 16 patches of each image (the class token is not a patch)
    for row in hidden:
        assert abs(row["active"] * IMAGES * 16 - round(row["active"] * IMAGES * 16)) < 1e-3
    assert not any(row["dead"] for row in hidden)


def test_permuted_mlp_units_of_a_vit_are_matched_exactly_and_cka_is_one() -> None:
    module = _vit()
    permutation = np.random.default_rng(2).permutation(64)
    permuted = copy.deepcopy(module)
    mlp, new = module.encoder.layers[0].mlp, permuted.encoder.layers[0].mlp
    with torch.no_grad():  # hidden unit i moves to index permutation^-1(i): the same function
        new[0].weight.copy_(mlp[0].weight[permutation])
        new[0].bias.copy_(mlp[0].bias[permutation])
        new[3].weight.copy_(mlp[3].weight[:, permutation])
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(module(images), permuted(images), atol=1e-5)
    tables = compare(_probe(module, [HIDDEN, BLOCK]), _probe(permuted, [HIDDEN, BLOCK]), 0.5, "match-vit")
    match = _layer(tables["match"], HIDDEN)
    expected = np.argsort(permutation)  # where each original unit went
    assert [row["matched"] for row in match] == expected.tolist()
    assert all(row["correlation"] > 0.999 for row in match)
    assert [row["status"] for row in match] == ["kept" if e == i else "moved" for i, e in enumerate(expected)]
    cka = {row["layer"]: row["cka"] for row in tables["cka"].to_pylist()}
    assert abs(cka[HIDDEN] - 1.0) < 1e-5 and abs(cka[BLOCK] - 1.0) < 1e-5  # the block output is unchanged


def test_a_zeroed_mlp_unit_of_a_vit_is_reported_dead() -> None:
    module = _vit()
    later = copy.deepcopy(module)
    with torch.no_grad():  # GELU(0) = 0 at every token: constant
        later.encoder.layers[0].mlp[0].weight[7].zero_()
        later.encoder.layers[0].mlp[0].bias[7] = 0.0
    tables = compare(_probe(module, [HIDDEN]), _probe(later, [HIDDEN]), 0.5, "match-vit")
    status = [row["status"] for row in tables["match"].to_pylist()]
    assert status[7] == "died"
    assert status.count("died") == 1
