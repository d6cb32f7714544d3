"""User errors reach the command line as one line and exit status 2, never as a traceback."""

import pytest
from click.testing import CliRunner

from atlas.cli import main
from atlas.core.errors import AtlasError
from atlas.data.source import SourceError
from atlas.kinds.examples import ScanError
from atlas.models import ModelError, UnknownLayerError
from atlas.optvis import ObjectiveError, ParamError, RenderError, TransformError
from atlas.plan.spec import SpecError
from atlas.run.executor import ExecuteError
from atlas.site.build import SiteError
from atlas.store.store import StoreError

SPEC = """
[job]
name = "errors"
out = "{out}"
[model]
name = "tiny-cnn"
[[layers]]
name = "{layer}"
channels = "0:2"
[render]
steps = 2
size = 32
{extra}
"""


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def spec(tmp_path, layer="conv2", extra="[examples]\nenabled = false"):
    path = tmp_path / "job.toml"
    path.write_text(SPEC.format(out=tmp_path / "out", layer=layer, extra=extra))
    return str(path)


def test_site_on_a_folder_without_job_json(tmp_path):
    line = invoke("site", str(tmp_path))
    assert "neither job.json nor" in line and "run the job first" in line


def test_examples_source_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    line = invoke("plan", spec(tmp_path, extra='[examples]\nsource = "empty"'))
    assert "holds no images" in line and "examples.source" in line


def test_misspelt_layer_lists_close_matches(tmp_path):
    line = invoke("plan", spec(tmp_path, layer="conv_2"))
    assert "no layer 'conv_2'" in line and "conv2" in line and "line 8" in line


def test_unknown_model_and_bad_spec_key(tmp_path):
    line = invoke("layers", "efficientnet-lit0")
    assert "unknown model 'efficientnet-lit0'" in line and "efficientnet-lite0" in line
    line = invoke("run", spec(tmp_path, extra="[execute]\nworker = 3"))
    assert "execute.worker: unknown key" in line and "'workers'" in line


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--objective", "chanel"], "objective"),
        (["--transforms", "distil"], "distill"),
        (["--param", "fourrier"], "fourier"),
        (["--precision", "fp8"], "bf16"),
    ],
)
def test_render_choices_name_the_valid_ones(tmp_path, option, words):
    result = CliRunner().invoke(
        main, ["render", "--model", "tiny-cnn", "--layer", "conv2", "-o", str(tmp_path / "x.png"), *option]
    )
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_render_of_a_missing_channel_is_one_line(tmp_path):
    line = invoke(
        "render",
        "--model",
        "tiny-cnn",
        "--layer",
        "conv2",
        "--channel",
        "99",
        "--steps",
        "1",
        "-o",
        str(tmp_path / "x.png"),
    )
    assert "channel 99 is out of range" in line


@pytest.mark.parametrize(
    "error",
    [
        SpecError,
        ModelError,
        UnknownLayerError,
        SourceError,
        ScanError,
        StoreError,
        SiteError,
        ObjectiveError,
        ParamError,
        TransformError,
        RenderError,
        ExecuteError,
    ],
)
def test_every_user_error_is_one_line_wherever_it_is_raised(monkeypatch, tmp_path, error):
    """Errors raised deep in a run (a scan, the store, the cluster) take the same single path."""
    assert issubclass(error, AtlasError)

    def fail(*args, **kwargs):
        raise error(f"{error.__name__} happened;\nfix it like this")

    monkeypatch.setattr("atlas.run.job.run_job", fail)
    line = invoke("run", spec(tmp_path))
    assert line == f"Error: {error.__name__} happened; fix it like this"
