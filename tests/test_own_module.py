"""A user's own `module:` model is found where the user keeps it: beside the spec (or in the
folder `[model] path` names), from any working directory, by the driver and the Ray workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from atlas.models import load_model
from atlas.models.registry import ModelError
from atlas.optvis.named import reports_negated
from atlas.plan.spec import SpecError, load_spec

NET = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
"""
JOB = """
[job]
name = "own"
out = "{out}"
[model]
name = "module:{module}:build"
{path}
[[layers]]
name = "2"
channels = "0:2"
[render]
steps = 2
size = 32
batch = 2
objectives = ["channel"]
[examples]
enabled = false
[execute]
workers = 1
"""


def _atlas(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atlas.cli", *args], capture_output=True, text=True, cwd=cwd)


def _layout(root: Path, kind: str) -> tuple[Path, str, str]:
    """A user's folder holding the model as a module beside the spec, as a package beside it, or
    in a sibling folder named by `[model] path`; returns the spec's folder, module and path line."""
    spec_dir = root / "my project é"
    spec_dir.mkdir(parents=True)
    if kind == "module":
        (spec_dir / "mynet_a.py").write_text(NET)
        return spec_dir, "mynet_a", ""
    if kind == "package":
        (spec_dir / "nets_b").mkdir()
        (spec_dir / "nets_b" / "__init__.py").write_text("")
        (spec_dir / "nets_b" / "small.py").write_text(NET)
        return spec_dir, "nets_b.small", ""
    (root / "src").mkdir()
    (root / "src" / "mynet_c.py").write_text(NET)
    return spec_dir, "mynet_c", 'path = "../src"'


@pytest.mark.parametrize("kind", ["module", "package", "path"])
def test_the_module_beside_the_spec_is_found_from_any_working_directory(tmp_path: Path, kind: str) -> None:
    spec_dir, module, path = _layout(tmp_path, kind)
    job = spec_dir / "job.toml"
    job.write_text(JOB.format(out=tmp_path / "out", module=module, path=path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = load_spec(job)
    expected = spec_dir if kind != "path" else tmp_path / "src"
    assert spec.model.path.resolve() == expected.resolve()
    before = list(sys.path)
    assert load_model(spec.model.name, search=spec.model.path).channels("2") == 6
    assert sys.path == before  # the folders were on the path for the build only
    planned = _atlas(elsewhere, "plan", str(job))
    assert planned.returncode == 0, planned.stderr
    assert "render 2 0..1" in planned.stdout and "1 units (1 render)" in planned.stdout


def test_a_job_on_ray_imports_the_users_module_in_its_workers(tmp_path: Path) -> None:
    spec_dir, module, path = _layout(tmp_path, "module")
    job = spec_dir / "job.toml"
    job.write_text(JOB.format(out=tmp_path / "out", module=module, path=path))
    ran = _atlas(tmp_path, "run", str(job), "--no-site")
    assert ran.returncode == 0, ran.stderr
    assert "1 units done" in ran.stdout


def test_layers_finds_a_module_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "mynet_d.py").write_text(NET)
    listed = _atlas(tmp_path, "layers", "module:mynet_d:build")
    assert listed.returncode == 0, listed.stderr
    assert "6 channels" in listed.stdout


def test_a_module_nowhere_is_one_line_naming_where_it_looked(tmp_path: Path) -> None:
    missing = _atlas(tmp_path, "layers", "module:nosuchnet:build")
    assert missing.returncode == 2 and missing.stdout == ""
    line = missing.stderr.strip()
    assert line.startswith("Error: cannot import 'build' from 'nosuchnet'") and "\n" not in line
    assert str(tmp_path.resolve()) in line and "[model] path" in line
    with pytest.raises(ModelError, match="looked in"):
        load_model("module:nosuchnet:build", search=tmp_path)


def test_a_model_path_that_is_no_folder_is_refused_at_the_spec(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(JOB.format(out=tmp_path / "out", module="mynet", path='path = "nowhere"'))
    with pytest.raises(SpecError, match=r"model\.path.*nowhere does not exist"):
        load_spec(job)


def test_render_takes_the_checkpoint_layers_takes(tmp_path: Path) -> None:
    """`atlas render --checkpoint` loads a DDP checkpoint of the user's module, as `atlas layers` does."""
    import torch

    (tmp_path / "mynet_e.py").write_text(NET)
    sys.path.insert(0, str(tmp_path))
    try:
        import mynet_e

        weights = {f"module.{k}": v * 2 for k, v in mynet_e.build().state_dict().items()}
    finally:
        sys.path.remove(str(tmp_path))
    torch.save({"model": weights}, tmp_path / "ddp.pt")
    args = ["render", "--model", "module:mynet_e:build", "--checkpoint", "ddp.pt", "--layer", "2"]
    rendered = _atlas(tmp_path, *args, "--steps", "2", "--size", "32", "-o", "out.png")
    assert rendered.returncode == 0, rendered.stderr
    assert "stripped the 'module.' prefix" in rendered.stderr and (tmp_path / "out.png").is_file()
    missing = _atlas(tmp_path, *args[:4], "nothere.pt", "--layer", "2", "-o", "out.png")
    assert missing.returncode == 2 and "nothere.pt" in missing.stderr


def test_the_notebook_api_is_listed_and_prints_briefly() -> None:
    import atlas
    from atlas.api import Visualization

    assert {"visualize", "examples", "Visualization"} <= set(dir(atlas))
    shown = repr(Visualization("channel:conv2:0", [], [0.25], [0.1] * 500))
    assert shown == "Visualization(objective='channel:conv2:0', activations=[0.25])"


def test_the_notebook_lists_a_modules_layers_and_points_to_that_listing() -> None:
    import torchvision

    import atlas
    from atlas.models import UnknownLayerError

    vit = torchvision.models.VisionTransformer(
        image_size=48, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    found = {info.name: info for info in atlas.layers(vit)}  # its own side, from `image_size`
    mlp = found["encoder.layers.encoder_layer_0.mlp.1"]
    assert (mlp.channels, mlp.height, mlp.width, mlp.layout) == (32, 3, 3, "tokens")
    with pytest.raises(UnknownLayerError, match=r"run `atlas.layers\(model\)` for all"):
        atlas.visualize(vit, "encoder.layers.encoder_layer_9:0", steps=1)
    with pytest.raises(UnknownLayerError, match=r"run `atlas layers tiny-cnn` for all"):
        atlas.visualize("tiny-cnn", "conv9:0", steps=1)


def test_a_negative_objective_reports_the_channel_it_drives_down() -> None:
    """`negative:L:c` minimizes channel c: its activation is the channel's (as the store reports
    it), not the objective's value, so the sign agrees with the channel's mean on the picture."""
    import numpy as np
    import torch

    import atlas
    from atlas.api import as_model

    shown = atlas.visualize("tiny-cnn", "negative:conv2:0", steps=8, size=32)
    model = as_model("tiny-cnn")
    pixels = torch.from_numpy(np.stack([np.asarray(i) for i in shown.images])).permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        mean = float(model.activations(pixels.float(), ["conv2"])["conv2"][:, 0].mean())
    assert shown.activation == pytest.approx(mean, abs=0.01) and shown.activation < 0
    assert reports_negated("negative:conv2:0") and not reports_negated("negative:conv2:0 + conv2:1")
