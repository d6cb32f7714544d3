"""Objective text: `atlas render --objective` and `atlas.visualize` read the same expressions and
report the same values, and a wrong one is one `Error:` line from the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import atlas
from atlas.cli import main
from atlas.optvis.named import parse_objective
from atlas.optvis.objectives import ObjectiveError

WIDTHS = {info.name: info.channels for info in atlas.layers("tiny-cnn") if info.name.startswith("conv")}
FAST = ["--steps", "2", "--size", "32"]


@st.composite
def targets(draw: st.DrawFn) -> str:
    layer = draw(st.sampled_from(sorted(WIDTHS)))
    channel = draw(st.integers(0, WIDTHS[layer] - 1))
    kind = draw(st.sampled_from(["", "neuron:", "negative:", "channel:"]))
    return f"{kind}{layer}:{channel}"


@st.composite
def expressions(draw: st.DrawFn) -> str:
    terms = draw(st.lists(targets(), min_size=1, max_size=3))
    text = ""
    for index, target in enumerate(terms):
        weight = draw(st.sampled_from(["", "2*", "0.5*", ".25*", "3 * "]))
        sign = draw(st.sampled_from(["+", "-"])) if index else draw(st.sampled_from(["", "-"]))
        text += f" {sign} {weight}{target}" if index else f"{sign}{weight}{target}"
    return text


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=expressions(), seed=st.integers(0, 3))
def test_cli_and_notebook_render_the_same_expression_to_the_same_picture_and_value(
    tmp_path: Path, text: str, seed: int
) -> None:
    out = tmp_path / f"{seed}.png"
    code, output = _cli(
        ["render", "--model", "tiny-cnn", "--objective", text, "--seed", str(seed), *FAST, "-o", str(out)]
    )
    assert code == 0, output
    reached = float(re.search(r"reached (-?[\d.]+)\)", output).group(1))
    notebook = atlas.visualize("tiny-cnn", text, steps=2, size=32, seed=seed)
    assert reached == pytest.approx(notebook.activations[0], abs=1e-3)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(notebook.images[0]))


def test_a_single_negative_target_reports_the_channel_as_the_store_does(tmp_path: Path) -> None:
    code, output = _cli(
        [
            "render",
            "--model",
            "tiny-cnn",
            "--objective",
            "negative:conv2:3",
            *FAST,
            "-o",
            str(tmp_path / "n.png"),
        ]
    )
    assert code == 0, output
    reached = float(re.search(r"reached (-?[\d.]+)\)", output).group(1))
    code, named = _cli(
        ["render", "--model", "tiny-cnn", "--objective", "negative", "--layer", "conv2", "--channel", "3"]
        + [*FAST, "-o", str(tmp_path / "m.png")]
    )
    assert code == 0, named
    assert reached == float(re.search(r"reached (-?[\d.]+)\)", named).group(1))


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet="conv123:+-*. ,x", min_size=1, max_size=24).filter(lambda t: ":" in t))
def test_an_unreadable_expression_is_one_error_line(text: str) -> None:
    try:
        parse_objective(text)
    except ObjectiveError:
        code, output = _cli(["render", "--model", "tiny-cnn", "--objective", text, "-o", "never.png"])
        lines = output.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), output
        assert "Traceback" not in output and not Path("never.png").exists()


def test_a_named_objective_without_a_layer_says_which_option_is_missing(tmp_path: Path) -> None:
    code, output = _cli(
        ["render", "--model", "tiny-cnn", "--objective", "neuron", "-o", str(tmp_path / "x.png")]
    )
    assert code == 2 and output.startswith("Error: ") and "--layer" in output
    assert not (tmp_path / "x.png").exists()


def test_examples_show_their_progress_unless_asked_not_to(capfd: pytest.CaptureFixture[str]) -> None:
    shown = atlas.examples("tiny-cnn", "conv2", "demo", k=2, channels=[0])
    err = capfd.readouterr().err
    assert re.search(r"scan: +100%.*\d+/\d+", err.replace("\r", "\n")) and "cutting crops" in err
    quiet = atlas.examples("tiny-cnn", "conv2", "demo", k=2, channels=[0], progress=False)
    assert capfd.readouterr().err == ""
    assert quiet.top(0)[0].source_id == shown.top(0)[0].source_id
    assert repr(quiet) == "Examples(layer='conv2', channels=1, k=2)"
