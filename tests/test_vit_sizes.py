"""A user's own ViT at any input size works with the default settings: its side is read from the
model (torchvision's `image_size`), every probe uses it, and renders follow it unless the spec
wrote render.size; a model that refuses the probe input is one line saying what to state."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from atlas.models import load_model
from atlas.models.registry import ModelError
from atlas.plan.spec import SpecError, load_spec
from atlas.run.job import prepare, run_job

VIT = """
import torch
from torch import nn
from torchvision.models import VisionTransformer


def _vit(size):
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=size, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )


def vit64():
    return _vit(64)


def vit96():
    return _vit(96)


def vit224():
    return _vit(224)


def vit384():
    return _vit(384)


class Only40(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        assert x.shape[-1] == 40, f"this model takes 40 px, got {x.shape[-1]}"
        return self.conv(x)


def only40():
    return Only40()
"""
JOB = """
[job]
out = "{out}"
[model]
name = "module:tinyvits:{builder}"
{model}
[[layers]]
name = "encoder.layers.encoder_layer_0.mlp.1"
channels = "0:1"
[render]
steps = 2
batch = 1
objectives = ["channel"]
{render}
[examples]
enabled = false
[execute]
workers = 1
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "tinyvits.py").write_text(VIT)
    return tmp_path


def _job(folder: Path, builder: str, render: str = "", model: str = "") -> Path:
    path = folder / f"{builder}.toml"
    path.write_text(JOB.format(out=folder / f"out-{builder}", builder=builder, render=render, model=model))
    return path


@pytest.mark.parametrize("size", [64, 96, 224, 384])
def test_a_vit_at_any_size_lists_its_layers_and_plans_at_its_own_size(folder: Path, size: int) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "atlas.cli", "layers", f"module:tinyvits:vit{size}"],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    assert listed.returncode == 0, listed.stderr
    side = size // 16
    assert f"1 cls/reg + {side}x{side} patches" in listed.stdout
    prepared = prepare(load_spec(_job(folder, f"vit{size}")))
    assert prepared.model.input_size == size and prepared.spec.render.size == size  # the default follows


def test_a_vit_job_with_default_settings_renders_at_the_models_size(folder: Path) -> None:
    spec = load_spec(_job(folder, "vit96"))
    result = run_job(spec, build=False)
    assert result.ok and result.done == 1, result.failed
    shard = next((folder / "out-vit96").rglob("shards/render/*.parquet"))
    image = Image.open(io.BytesIO(pq.read_table(shard).column("image")[0].as_py()))
    assert image.size == (96, 96)


def test_a_written_size_the_model_cannot_take_is_refused_not_changed(folder: Path) -> None:
    with pytest.raises(SpecError, match="takes only 64x64 inputs .*set size = 64"):
        prepare(load_spec(_job(folder, "vit64", render="size = 128")))


def test_a_model_refusing_the_probe_says_to_state_its_size(folder: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(ModelError, match=r"fails on a 224x224 input .*takes 40 px.*input_size = N"):
        load_model("module:tinyvits:only40")
    assert load_model("module:tinyvits:only40", stated={"input_size": 40}).input_size == 40


def test_a_vit_timeline_with_default_settings_renders_at_the_models_size(folder: Path) -> None:
    import torch

    from atlas.run.timeline import prepare_timeline, timeline_store

    weights = load_model("module:tinyvits:vit64", search=folder).module.state_dict()
    for step in (1, 2):
        torch.save({k: v + step * 0.01 for k, v in weights.items()}, folder / f"step-{step}.pt")
    job = _job(folder, "vit64", model='checkpoints = ["step-*.pt"]')
    spec = load_spec(job)
    plan = prepare_timeline(spec, timeline_store(spec.out))
    assert plan.spec is not None and plan.spec.render.size == 64  # the default followed the model
    assert len(plan.series) == 2
