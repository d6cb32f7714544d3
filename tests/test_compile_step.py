"""A step that compiles: the truncated model through torch.compile gives the eager pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.models import LoadedModel, load_model
from atlas.optvis.recipes import render_channels
from atlas.plan.spec import ExecuteSpec, RenderSpec
from atlas.run.worker import compile_backend

SETTINGS = RenderSpec(steps=3, size=48, batch=4, objectives=("channel", "negative"))


def _render(name: str, layer: str, backend: str) -> tuple[list, LoadedModel]:
    torch.manual_seed(0)  # weights="none" draws the weights
    model = load_model(name, weights="none" if ":" in name else "default")
    model.compile = backend
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return render_channels(model, layer, [0, 1], SETTINGS), model


def _compare(eager: list, compiled: list, pixels: int) -> None:
    for a, b in zip(eager, compiled, strict=True):
        assert (a.channel, a.objective) == (b.channel, b.objective)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= pixels
        assert a.activation == pytest.approx(b.activation, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize(("name", "layer"), [("tiny-cnn", "conv2"), ("torchvision:googlenet", "inception4a")])
def test_the_truncated_model_compiles_whole_and_renders_the_same_pictures(name, layer) -> None:
    """aot_eager: Dynamo and AOTAutograd trace forward and backward as inductor would, without
    generating code (seconds, not a minute, on CPU). The same kernels run, so the same pictures."""
    eager, _ = _render(name, layer, "")
    compiled, model = _render(name, layer, "aot_eager")
    counters = torch._dynamo.utils.counters
    assert counters["frames"]["ok"] >= 1 and not counters["graph_break"], dict(counters["graph_break"])
    assert list(model.compile_seconds) == [frozenset({layer})]
    _compare(eager, compiled, pixels=0)


@pytest.mark.slow  # inductor generates and builds C++ on first use: ~45 s on a 2-core machine
def test_inductor_renders_within_a_grey_level_of_eager() -> None:
    """Generated kernels fuse and reorder float operations: pictures may differ by rounding."""
    eager, _ = _render("tiny-cnn", "conv2", "")
    compiled, model = _render("tiny-cnn", "conv2", "inductor")
    assert model.compile_seconds[frozenset({"conv2"})] > 0
    _compare(eager, compiled, pixels=1)


@pytest.mark.parametrize("choice", ["auto", "on", "off"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_compile_choice_compiles_on_cuda_by_default_and_never_when_off(choice, device) -> None:
    backend = compile_backend(ExecuteSpec(compile=choice).compile, torch.device(device))
    expected = {"on": "inductor", "off": "", "auto": "inductor" if device == "cuda" else ""}[choice]
    assert backend == expected


def test_blocks_compile_once_for_every_truncation_depth() -> None:
    """GoogLeNet's Inception blocks are compiled one by one and shared: rendering three layers
    compiles the three blocks they reach, once each, and leaves the model's own modules alone."""
    torch.manual_seed(0)
    model = load_model("torchvision:googlenet", weights="none")
    eager = {
        layer: render_channels(model, layer, [0, 1], SETTINGS) for layer in ("inception3a", "inception4a")
    }
    model.compile = "aot_eager"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for layer in ("inception3a", "inception4a", "inception3b"):
        compiled = render_channels(model, layer, [0, 1], SETTINGS)
        if layer in eager:
            _compare(eager[layer], compiled, pixels=0)
    assert torch._dynamo.utils.counters["frames"]["ok"] == 3  # the blocks 3a, 3b, 4a: once each
    assert type(model.module.inception4a).__name__ == "Inception"  # compiled copies live in the sub-networks
    assert len(model.compile_seconds) == 3
