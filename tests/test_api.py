"""The notebook API: objective strings, models as given, displayable results, the README snippet."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import atlas
from atlas.api import ApiError, Examples, Visualization, parse_objective
from atlas.core.errors import AtlasError
from atlas.models import load_model
from atlas.optvis.objectives import StepState

ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 3, "size": 32}


def _state(model, layers=("conv2", "conv3")) -> StepState:
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        return StepState(model.activations(images, list(layers)), images)


def test_objective_strings_read_as_weighted_sums():
    model = load_model("tiny-cnn")
    state = _state(model)
    mean = state.activations["conv2"].mean(dim=(2, 3))
    combined = parse_objective("2*conv2:5 - conv2:7 + .5*conv2:1")
    assert combined.layers == frozenset({"conv2"})
    torch.testing.assert_close(combined(state), 2 * mean[:, 5] - mean[:, 7] + 0.5 * mean[:, 1])
    neuron = parse_objective("neuron:conv3:2")(state)
    torch.testing.assert_close(neuron, state.activations["conv3"][:, 2, 4, 4])
    torch.testing.assert_close(parse_objective("-conv2:3")(state), -mean[:, 3])
    assert parse_objective("logit:4").layers == frozenset({"logits"})


@pytest.mark.parametrize(
    "text, message",
    [
        ("conv2", "cannot read the objective target 'conv2'"),
        ("conv2:1 conv2:2", "join terms with"),
        ("", "empty"),
    ],
)
def test_unreadable_objectives_say_how_to_write_them(text, message):
    with pytest.raises(ApiError, match=message) as caught:
        parse_objective(text)
    assert isinstance(caught.value, AtlasError)


def test_visualize_a_channel_with_the_cli_defaults_and_display_it():
    result = atlas.visualize("tiny-cnn", "conv2:3 - conv2:4", **FAST)
    assert isinstance(result, Visualization) and len(result.images) == 1
    assert result.images[0].size == (32, 32) and len(result.loss) == 3
    assert np.isfinite(result.activation)
    assert Image.open(io.BytesIO(result._repr_png_())).size == (32, 32)
    assert "conv2:3 - conv2:4" in result._repr_html_() and "data:image/png;base64," in result._repr_html_()
    with pytest.raises(ApiError, match="did you mean steps"):
        atlas.visualize("tiny-cnn", "conv2:3", stepz=3)
    with pytest.raises(ApiError, match="count=4"):
        atlas.visualize("tiny-cnn", "conv2:3", diversity=True, **FAST)


def test_a_module_is_used_as_it_is_without_changing_it():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = atlas.visualize(net, "2:5", count=2, diversity=True, input_size=32, **FAST)
    assert len(result.images) == 2 and len(result.activations) == 2
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert isinstance(net[1], nn.BatchNorm2d)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_examples_of_a_layer_from_images_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)) for _ in range(9)]
    images[4] = images[4].convert("L")  # converted, not skipped
    images[0].save(tmp_path / "first.png")
    images[0] = tmp_path / "first.png"  # paths and PIL images mix
    found = atlas.examples("tiny-cnn", "conv2", images, channels=[1, 6], k=3)
    assert isinstance(found, Examples) and found.channels == [1, 6]
    top, bottom = found.top(6), found.bottom(6)
    assert len(top) == 3 and len(bottom) == 3
    assert [e.activation for e in top] == sorted((e.activation for e in top), reverse=True)
    assert top[0].activation >= bottom[0].activation and top[0].crop.size == (96, 96)
    assert "conv2:6" in found._repr_html_() and Image.open(io.BytesIO(found._repr_png_())).height == 2 * 96
    assert {e.source_id for e in top + bottom} <= {str(i) for i in range(9)}
    with pytest.raises(ApiError, match="channel 2 was not scanned"):
        found.top(2)
    assert atlas.scan is atlas.examples


def test_the_readme_snippet_runs(tmp_path, monkeypatch):
    """The README's notebook section, with 2 steps at 48 px and a small folder for "demo"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From a notebook", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "steps=128" in snippet and '"demo"' in snippet
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for index in range(6):
        Image.fromarray(rng.integers(0, 256, (120, 140, 3), dtype=np.uint8)).save(photos / f"{index}.png")
    snippet = snippet.replace("steps=128", "steps=2, size=48").replace('"demo"', repr(str(photos)))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert isinstance(namespace["v"], Visualization) and namespace["v"].images[0].size == (48, 48)
    assert (tmp_path / "layer3-7.png").is_file()
    assert namespace["ex"].channels == [5, 7] and namespace["ex"].top(5)
