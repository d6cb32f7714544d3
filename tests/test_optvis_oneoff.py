"""`atlas render`: one-off renders to a PNG, with clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from atlas.cli import main
from atlas.models import load_model
from atlas.optvis import RenderError
from atlas.optvis.oneoff import OneOffRequest, build_objective, read_out, render_one_off

TINY = ["render", "--model", "tiny-cnn", "--steps", "4", "--size", "32"]


def test_render_command_writes_a_strip(tmp_path):
    out = tmp_path / "div.png"
    args = [*TINY, "--layer", "conv2", "--channel", "3", "--objective", "diversity", "--count", "3"]
    result = CliRunner().invoke(main, [*args, "--penalty", "tv=0.1", "--descent", "linf", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "diversity conv2:3 reached" in result.output
    assert np.asarray(Image.open(out)).shape == (32, 96, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "conv22"], "closest: conv2"),
        (["--layer", "conv2", "--channel", "99"], "channel 99 is out of range"),
        (["--layer", "conv2", "--objective", "chanel"], "unknown objective 'chanel'"),
        (["--layer", "conv2", "--penalty", "tv=x"], "NAME=WEIGHT"),
        (["--layer", "conv2", "--param", "pixels"], "unknown parameterization 'pixels'"),
        (["--layer", "conv2", "--transforms", "lucid"], "unknown transforms 'lucid'"),
    ],
)
def test_render_command_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(main, [*TINY, *args, "-o", str(tmp_path / "x.png")])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_one_off_objectives_and_read_out():
    model = load_model("tiny-cnn")
    logit = OneOffRequest(layer="conv2", channel=2, objective="logit", steps=3, size=32, transforms="none")
    result = render_one_off(model, logit)
    assert read_out(result, logit) == result.activations["logits"][:, 2].tolist()
    dream = OneOffRequest(layer="conv2", objective="deepdream", steps=3, size=32, penalties={"blur": 1.0})
    assert build_objective(dream).layers == {"conv2"}
    assert read_out(render_one_off(model, dream), dream)[0] > 0
    with pytest.raises(RenderError, match="at least 2 images"):
        render_one_off(model, OneOffRequest(layer="conv2", objective="diversity"))
    with pytest.raises(RenderError, match="unknown penalty 'l2'"):
        build_objective(OneOffRequest(layer="conv2", penalties={"l2": 1.0}))
