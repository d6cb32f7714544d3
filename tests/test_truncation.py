"""Truncation that returns: the traced sub-network gives the hook path's activations, and stops early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from training import small_vit

from atlas.models import LoadedModel, load_model

# (model, layer sets, input side): maps, a leaf conv, inception blocks, MBConv blocks, tokens, @cls.
CASES = {
    "tiny-cnn": (("conv1",), ("conv2", "conv3"), ("conv1", "conv3")),
    "torchvision:googlenet": (("inception3a",), ("conv1", "inception4d"), ("inception4a", "inception4e")),
    "torchvision:resnet18": (("layer1",), ("layer2", "layer3.1.conv2"), ("layer4",)),
    "efficientnet-lite0": (("_blocks.2",), ("_blocks.5", "_conv_stem"), ("_blocks.9", "_blocks.15")),
}


def _model(name: str) -> LoadedModel:
    return load_model(name, weights="none" if ":" in name else "default")


@pytest.fixture(scope="module")
def models() -> dict[str, LoadedModel]:
    return {name: _model(name) for name in CASES}


def _both(model: LoadedModel, x: torch.Tensor, layers: tuple[str, ...]) -> tuple[dict, dict]:
    with torch.no_grad():
        traced = model.activations(x, layers)
        model.trace = False
        try:
            hooked = model.activations(x, layers)
        finally:
            model.trace = True
    return traced, hooked


def _assert_same(traced: dict, hooked: dict) -> None:
    assert set(traced) == set(hooked)
    for name, expected in hooked.items():
        assert traced[name].shape == expected.shape, name
        torch.testing.assert_close(traced[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_traced_subnetwork_gives_the_hook_paths_activations(models, name) -> None:
    model = models[name]
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for layers in CASES[name]:
        assert model.truncated(set(layers)) is not None, (name, layers)  # traced, not the fallback
        _assert_same(*_both(model, x, layers))


def test_vit_tokens_and_class_token_come_back_in_the_same_layouts() -> None:
    model = small_vit()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    names = [info.name for info in model.layers()]
    mlp = next(n for n in names if n.endswith("mlp.1"))  # GELU: the block's hidden units
    block = "encoder.layers.encoder_layer_1"
    for layers in ((mlp,), (block, f"{block}@cls"), ("encoder.layers.encoder_layer_0.self_attention",)):
        traced, hooked = _both(model, x, layers)
        _assert_same(traced, hooked)
    assert traced[layers[0]].ndim == 4


def test_gradients_flow_through_the_traced_subnetwork_as_through_the_hooks(models) -> None:
    model = models["torchvision:googlenet"]
    grads = []
    for trace in (True, False):
        model.trace = trace
        x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        model.activations(x, ["inception4a"])["inception4a"][:, 5].mean().backward()
        grads.append(x.grad)
    model.trace = True
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


class _CountConvolutions(TorchDispatchMode):
    """Counts the convolutions that actually run (folded BatchNorm leaves no other leaf to watch)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mkldnn_convolution):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _convolutions(model: LoadedModel, layers: list[str], trace: bool = True) -> int:
    model.trace = trace
    try:
        with torch.no_grad(), _CountConvolutions() as counter:
            model.activations(torch.rand(1, 3, 64, 64), layers)
    finally:
        model.trace = True
    return counter.count


@pytest.mark.parametrize("name", ["tiny-cnn", "torchvision:googlenet", "efficientnet-lite0"])
def test_nothing_after_the_deepest_layer_runs(models, name) -> None:
    """The traced sub-network runs exactly the convolutions the hook path runs before it stops,
    fewer than the whole model's, and fewer for a shallower layer."""
    model = models[name]
    shallow, deep = CASES[name][0][0], CASES[name][2][-1]
    model.truncated({shallow}), model.truncated({deep})  # built (and checked) before counting
    whole = _convolutions(model, ["logits"])
    counts = {layer: _convolutions(model, [layer]) for layer in (shallow, deep)}
    assert counts == {layer: _convolutions(model, [layer], trace=False) for layer in (shallow, deep)}
    assert 0 < counts[shallow] < counts[deep] <= whole


def test_module_called_twice_falls_back_to_the_hooks(models) -> None:
    """ResNet's block calls one ReLU twice: the traced graph returns its first call, while the hook
    path, run on to a deeper layer, keeps the last one. The check on the probe notices, and the
    hook path serves that layer set as before; alone, both paths agree on the first call."""
    model = models["torchvision:resnet18"]
    assert model.truncated({"layer2.0.relu", "layer3"}) is None
    assert model.truncated({"layer2.0.relu"}) is not None
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.activations(x, ["layer2.0.relu", "layer3"])
    assert out["layer2.0.relu"].shape[1] == 128 and out["layer3"].shape[1] == 256


def test_derived_dictionary_layers_come_from_the_traced_source() -> None:
    from atlas.plan.dictionary import Projection

    model = _model("tiny-cnn")
    vectors = np.random.default_rng(0).normal(size=(5, model.channels("conv2"))).astype(np.float32)
    model.add_derived_layer("conv2@dict", "conv2", Projection(vectors))
    assert model.channels("conv2@dict") == 5
    x = torch.rand(2, 3, 48, 48)
    traced, hooked = _both(model, x, ("conv2@dict", "conv1"))
    _assert_same(traced, hooked)
    expected = torch.einsum(
        "bchw,kc->bkhw", model.activations(x, ["conv2"])["conv2"], torch.from_numpy(vectors)
    )
    torch.testing.assert_close(traced["conv2@dict"], expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(
    layers=st.sets(st.sampled_from(["conv1", "conv2", "conv3"]), min_size=1, max_size=3),
    side=st.integers(min_value=24, max_value=72),
    batch=st.integers(min_value=1, max_value=3),
)
def test_any_layer_set_and_input_size_agrees(layers, side, batch) -> None:
    x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(side))
    _assert_same(*_both(_TINY, x, tuple(sorted(layers))))


_TINY = _model("tiny-cnn")  # one model for every example Hypothesis draws
