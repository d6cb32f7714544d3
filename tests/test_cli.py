"""The command line: bad input fails before any work with one clear line; listing commands work."""

import pytest
from click.testing import CliRunner

from atlas.cli import main

SPEC = """
[job]
name = "cli"
out = "{out}"
[model]
name = "tiny-cnn"
[[layers]]
name = "{layer}"
channels = "0:2"
[render]
steps = 2
size = 32
[examples]
enabled = false
"""


def write(tmp_path, layer="conv2", extra=""):
    path = tmp_path / "job.toml"
    path.write_text(SPEC.format(out=tmp_path / "out", layer=layer) + extra)
    return path


def test_unknown_layer_fails_before_work(tmp_path):
    result = CliRunner().invoke(main, ["run", str(write(tmp_path, layer="conv_2"))])
    assert result.exit_code == 2
    assert "no layer 'conv_2'" in result.output and "conv2" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_key_fails_before_work(tmp_path):
    result = CliRunner().invoke(main, ["run", str(write(tmp_path, extra="\n[execute]\nworker = 2\n"))])
    assert result.exit_code == 2
    assert "execute.worker: unknown key" in result.output and "'workers'" in result.output
    assert not (tmp_path / "out").exists()


def test_plan_lists_units_without_running(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(write(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "render conv2 0..1" in result.output and "1 units (1 render)" in result.output
    assert not (tmp_path / "out").exists()


def test_layers_lists_channels_and_sizes():
    result = CliRunner().invoke(main, ["layers", "tiny-cnn"])
    assert result.exit_code == 0
    assert "conv2" in result.output and "32 channels" in result.output and "16x16" in result.output


def test_unknown_model_is_one_line():
    result = CliRunner().invoke(main, ["layers", "efficientnet-lite"])
    assert (
        result.exit_code == 2 and "unknown model" in result.output and "efficientnet-lite0" in result.output
    )


def test_progress_total_grows_with_units_planned_during_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    from atlas.cli import _progress
    from atlas.kinds.render import RenderWork
    from atlas.plan.spec import RenderSpec
    from atlas.plan.units import Unit

    unit = Unit("conv2", (0,), "r", RenderWork(RenderSpec()))
    tick = _progress(2)
    tick(unit, "skipped")  # 1 left
    tick(unit, "planned")  # an icons unit found once its grid was computed: 2
    tick(unit, "done")
    tick(unit, "done")
    assert "2/2" in capsys.readouterr().err.replace(" ", "")
