"""The model's input as the spec states it (side, normalization, value range), or as the model
declares it: used by the renders and scans, keyed, recorded in job.json and shown by the site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.models import load_model
from atlas.plan.spec import SpecError, parse_spec
from atlas.run.job import run_job

BASE = '[job]\nout = "{out}"\n[model]\nname = "tiny-cnn"\n{model}\n[[layers]]\nname = "conv2"\nchannels = "0:1"\n'
RUN = '[render]\nsteps = 2\nsize = 32\nbatch = 2\nobjectives = ["channel"]\n[examples]\nenabled = false\n[execute]\nworkers = 1\n'


def _spec(model: str, out: str = "out"):
    return parse_spec(BASE.format(out=out, model=model))


numbers = st.floats(min_value=-300, max_value=300, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=40, deadline=None)
@given(
    low=numbers,
    width=st.floats(min_value=0.5, max_value=1000).map(lambda v: round(v, 3)),
    mean=st.tuples(numbers, numbers, numbers),
    std=st.tuples(*[st.floats(min_value=0.01, max_value=300).map(lambda v: round(v, 3))] * 3),
)
def test_a_stated_normalization_is_the_same_map_in_unit_range(low, width, mean, std) -> None:
    """(low + x (high - low) - mean) / std, written in the spec's units, equals what the model
    applies to [0, 1] RGB after the conversion, for any range and normalization."""
    high = low + width
    spec = _spec(f"mean = {list(mean)}\nstd = {list(std)}\nvalue_range = [{low}, {high}]")
    stated = spec.model.input_overrides()
    x01 = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    for c in range(3):
        direct = (low + x01 * width - mean[c]) / std[c]
        converted = (x01 - stated["mean"][c]) / stated["std"][c]
        assert torch.allclose(direct, converted, rtol=1e-9, atol=1e-6)


def test_value_range_alone_means_unnormalized_values_in_that_range() -> None:
    stated = _spec("value_range = [0, 255]").model.input_overrides()
    assert stated["mean"] == (0.0, 0.0, 0.0) and stated["std"] == pytest.approx((1 / 255,) * 3)
    assert _spec("").model.input_overrides() == {}  # nothing stated: the model's declaration


@pytest.mark.parametrize(
    "line, message",
    [
        ("input_size = 4", "model.input_size: 4 is not allowed: must be between 8 and 4096 pixels"),
        ("input_size = 32.5", "model.input_size: expected an integer"),
        ("mean = [0.5, 0.5]", "model.mean: expected an array of three numbers"),
        ("std = [1, 0, 1]", "model.std: [1.0, 0.0, 1.0] has a value <= 0"),
        ("value_range = [255, 0]", "model.value_range: [255, 0] is empty"),
    ],
)
def test_bad_input_descriptions_are_one_line_each(line: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        _spec(line)


def test_the_stated_input_is_used_keyed_and_a_restatement_of_the_declared_one_is_not() -> None:
    declared = load_model("tiny-cnn")
    same = load_model("tiny-cnn", stated=_spec(f"input_size = {declared.input_size}").model.input_overrides())
    assert same.digest == declared.digest and same.stated is None  # as declared: keys unchanged
    small = load_model(
        "tiny-cnn", stated=_spec("input_size = 32\nvalue_range = [0, 255]").model.input_overrides()
    )
    assert small.input_size == 32 and small.digest != declared.digest
    assert small.preprocessing.std == pytest.approx((1 / 255,) * 3)
    x = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(small.normalize(x), torch.full_like(x, 127.5))


def test_a_job_records_and_shows_the_input_it_used(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = parse_spec(BASE.format(out=out, model="input_size = 48\nmean = [0.5, 0.5, 0.5]") + RUN)
    result = run_job(spec)
    assert result.ok
    job = json.loads((out / "job.json").read_text())
    assert job["input"] == {
        "size": 48,
        "mean": [0.5, 0.5, 0.5],
        "std": job["input"]["std"],
        "from_spec": ["mean", "size"],
    }
    assert job["input_size"] == 48
    index = (out / "site" / "index.html").read_text()
    assert "model input" in index and "48 (the spec)" in index and "(the model)" in index  # std as declared
