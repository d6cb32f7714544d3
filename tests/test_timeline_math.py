"""Known answers for the timeline's math: linear CKA, unit matching, dead units (with batch norm)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from atlas.kinds.timeline.cka import linear_cka
from atlas.kinds.timeline.match import match_units
from atlas.kinds.timeline.probe import probe_model
from atlas.models import freeze
from atlas.models.registry import Preprocessing


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = np.random.default_rng(0).normal(size=(200, 12))
    assert linear_cka(x, x) == pytest.approx(1.0)


@pytest.mark.parametrize("examples", [200, 8])  # both the feature-space and the Gram-matrix forms
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(examples: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(examples, 12))
    y = x @ rng.normal(size=(12, 12)) + 0.5 * rng.normal(size=(examples, 12))
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    base = linear_cka(x, y)
    assert base < 0.99  # a different representation: the invariances below are not trivially 1
    assert linear_cka(x @ rotation, y) == pytest.approx(base)
    assert linear_cka(7.5 * x, y) == pytest.approx(base)
    assert linear_cka(x, 0.01 * y @ rotation) == pytest.approx(base)


def test_cka_of_unrelated_representations_is_low() -> None:
    rng = np.random.default_rng(2)
    assert linear_cka(rng.normal(size=(500, 4)), rng.normal(size=(500, 4))) < 0.1


def _cnn(batchnorm: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [("conv1", nn.Conv2d(3, 8, 3, padding=1, bias=not batchnorm))]
    if batchnorm:
        layers.append(("bn1", nn.BatchNorm2d(8)))
    layers += [("relu1", nn.ReLU()), ("conv2", nn.Conv2d(8, 6, 3, padding=1)), ("relu2", nn.ReLU())]
    module = nn.Sequential()
    for name, layer in layers:
        module.add_module(name, layer)
    if batchnorm:  # trained-looking statistics, so folding has something to fold
        bn = module.bn1
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.1, 0.3)
    return module.eval()


def _probe(module: nn.Module, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions x channels signature, dead mask) of `layer` on a fixed set of random images."""
    model = freeze("test", copy.deepcopy(module), Preprocessing(input_size=16))
    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    table = probe_model(model, [layer], images, positions=8, seed=0)
    signature = np.stack(table.column("signature").to_numpy(zero_copy_only=False)).T
    return signature, table.column("dead").to_numpy(zero_copy_only=False)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_matcher_recovers_a_permutation_of_channels_exactly(batchnorm: bool) -> None:
    module = _cnn(batchnorm)
    permutation = np.random.default_rng(4).permutation(8)
    permuted = copy.deepcopy(module)
    with torch.no_grad():
        permuted.conv1.weight.copy_(module.conv1.weight[permutation])
        if batchnorm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(permuted.bn1, name).copy_(getattr(module.bn1, name)[permutation])
        else:
            permuted.conv1.bias.copy_(module.conv1.bias[permutation])
        permuted.conv2.weight.copy_(module.conv2.weight[:, permutation])
    images = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(permuted(images), module(images))  # the same function

    before, dead_before = _probe(module, "relu1")
    after, dead_after = _probe(permuted, "relu1")
    matching = match_units(before, after, dead_before, dead_after)
    np.testing.assert_array_equal(matching.matched, np.argsort(permutation))
    assert np.all(matching.correlation > 0.999)
    moved = [s for i, s in enumerate(matching.status) if permutation[i] != i]
    assert set(moved) == {"moved"}


@pytest.mark.parametrize("batchnorm", [False, True])
def test_a_channel_whose_weights_are_zeroed_is_reported_dead(batchnorm: bool) -> None:
    module = _cnn(batchnorm)
    later = copy.deepcopy(module)
    with torch.no_grad():
        later.conv1.weight[3].zero_()
        if batchnorm:
            later.bn1.bias[3] = 0.5  # the dead unit outputs a positive constant after BN + ReLU
        else:
            later.conv1.bias[3] = 0.0
    before, dead_before = _probe(module, "relu1")
    after, dead_after = _probe(later, "relu1")
    assert not dead_before.any()
    assert dead_after.tolist() == [c == 3 for c in range(8)]
    if batchnorm:
        model = freeze("later", copy.deepcopy(later), Preprocessing(input_size=16))
        table = probe_model(model, ["relu1"], torch.rand(2, 3, 16, 16), positions=4, seed=0)
        assert table.column("mean")[3].as_py() > 0.1  # constant, yet not zero
    matching = match_units(before, after, dead_before, dead_after)
    assert matching.status[3] == "died"
    assert [s for c, s in enumerate(matching.status) if c != 3] == ["kept"] * 7
    reborn = match_units(after, before, dead_after, dead_before)
    assert reborn.status[3] == "born"


def test_a_unit_whose_response_changed_is_reported_changed() -> None:
    rng = np.random.default_rng(5)
    before = rng.normal(size=(300, 4))
    after = before.copy()
    after[:, 2] = rng.normal(size=300)  # unit 2 now responds to something unrelated
    dead = np.zeros(4, bool)
    matching = match_units(before, after, dead, dead)
    assert matching.status == ("kept", "kept", "changed", "kept")
    assert matching.correlation[2] < 0.5
