"""Job specs: valid specs load; bad ones fail before any work with the key, line and fix."""

from pathlib import Path

import pytest

from atlas.models import load_model
from atlas.plan.spec import SpecError, check_against_model, load_spec, parse_spec

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"

BASE = """
[job]
name = "t"

[model]
name = "tiny-cnn"

[[layers]]
name = "conv2"
channels = "0:4"
"""


def test_demo_spec_loads():
    spec = load_spec(DEMO)
    assert spec.model.name == "efficientnet-lite0"
    assert spec.layers and all(layer.channels for layer in spec.layers)
    assert spec.out == Path("atlas-out/demo")


def test_channels_forms():
    spec = parse_spec(
        BASE + '\n[[layers]]\nname = "conv3"\nchannels = [3, 1, 3]\n[[layers]]\nname = "relu1"\n'
    )
    assert spec.layers[0].channels == (0, 1, 2, 3)
    assert spec.layers[1].channels == (3, 1)  # order kept, duplicates dropped
    assert spec.layers[2].channels is None


def test_unknown_key_names_line_and_close_match():
    text = BASE + "\n[render]\nstesp = 10\n"
    with pytest.raises(SpecError) as err:
        parse_spec(text, source="job.toml")
    message = str(err.value)
    assert "render.stesp" in message
    assert f"line {text.splitlines().index('stesp = 10') + 1}" in message
    assert "'steps'" in message


def test_wrong_type_is_named():
    with pytest.raises(SpecError, match=r"render\.steps: expected an integer, got string 'ten'"):
        parse_spec(BASE + '\n[render]\nsteps = "ten"\n')


def test_unknown_section_and_bad_choice():
    with pytest.raises(SpecError, match="unknown section"):
        parse_spec(BASE + "\n[rendr]\nsteps = 1\n")
    with pytest.raises(SpecError, match="render.param.*choose one of"):
        parse_spec(BASE + '\n[render]\nparam = "fft"\n')


def test_missing_files_fail_early(tmp_path):
    with pytest.raises(SpecError, match="model.checkpoint: file .*nope.pt does not exist"):
        parse_spec(
            BASE.replace('name = "tiny-cnn"', 'name = "tiny-cnn"\ncheckpoint = "nope.pt"'), base=tmp_path
        )
    with pytest.raises(SpecError, match="examples.source: .*missing-folder does not exist"):
        parse_spec(BASE + '\n[examples]\nsource = "missing-folder"\n', base=tmp_path)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "absent.toml")


def test_unknown_layer_lists_close_matches(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(BASE.replace('"conv2"', '"conv_2"'))
    spec = load_spec(path)
    with pytest.raises(SpecError) as err:
        check_against_model(spec, load_model("tiny-cnn"))
    assert "conv_2" in str(err.value) and "conv2" in str(err.value) and "line 9" in str(err.value)


def test_channel_out_of_range(tmp_path):
    spec = parse_spec(BASE.replace('"0:4"', "[1, 99]"))
    with pytest.raises(SpecError, match=r"has 32 channels.*\[99\] out of range"):
        check_against_model(spec, load_model("tiny-cnn"))


def test_transform_presets_match_the_renderer():
    from atlas.optvis.transforms import PRESETS
    from atlas.plan.spec import TRANSFORM_PRESETS

    assert set(TRANSFORM_PRESETS) == set(PRESETS)


def test_top_level_key_below_a_table_gets_a_hint():
    text = '[model]\nname = "tiny-cnn"\nlayers = ["conv2"]\n'
    with pytest.raises(
        SpecError, match=r"model.layers: unknown key. 'layers' is a top-level key: move it above"
    ):
        parse_spec(text)


def test_example_quantiles_are_checked():
    assert parse_spec(BASE + "\n[examples]\nquantiles = [0.1, 0.9]\n").examples.quantiles == (0.1, 0.9)
    with pytest.raises(SpecError, match="examples.quantiles: expected an array of two numbers"):
        parse_spec(BASE + '\n[examples]\nquantiles = ["a", 1]\n')
    with pytest.raises(SpecError, match=r"examples.quantiles.*within 0..1"):
        parse_spec(BASE + "\n[examples]\nquantiles = [0.9, 0.1]\n")
