"""Trust units: a picture judged against its channel's natural images (atlas/kinds/trust.py).

The known answer is a planted fooling circuit (tests/fooling.py, after Geirhos et al. 2023): the
fooled unit's picture is flagged for taking a path photos never take, its unmanipulated twin's is
not, and both models rank the same top examples.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.cli import main
from atlas.kinds.trust import lower_layers, main_images, path_scores, top_examples
from atlas.quality.thresholds import flags
from atlas.site.layer_quality import layer_records
from atlas.store.store import open_store

HERE = Path(__file__).resolve().parent


def _model(names: list[str]) -> SimpleNamespace:
    return SimpleNamespace(layers=lambda: [SimpleNamespace(name=n) for n in names])


@given(
    count=st.integers(1, 40),
    at=st.integers(0, 39),
    wanted=st.integers(1, 5),
    suffix=st.sampled_from(["", "@cls", "@sae:ab12"]),
)
def test_lower_layers_are_spread_over_the_layers_before_the_unit(
    count: int, at: int, wanted: int, suffix: str
) -> None:
    names = [f"block{i}" for i in range(count)]
    base = names[min(at, count - 1)]
    chosen = lower_layers(_model(names), base + suffix, wanted)
    below = names[: names.index(base)]
    assert len(chosen) == min(wanted, len(below)) and len(set(chosen)) == len(chosen)
    assert all(name in below for name in chosen)
    assert [below.index(n) for n in chosen] == sorted(below.index(n) for n in chosen)
    gaps = np.diff([-1] + [below.index(n) for n in chosen])
    assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # evenly spread, not bunched at one end


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), dims=st.integers(3, 40), refs=st.integers(2, 8))
def test_path_scores_do_not_depend_on_the_units_of_each_dimension(seed: int, dims: int, refs: int) -> None:
    """Patterns are standardized over the random images: shifting a lower channel (a bias) or
    rescaling the whole layer changes nothing."""
    rng = np.random.default_rng(seed)
    base, references, picture = (torch.from_numpy(rng.normal(size=(n, dims))) for n in (24, refs, 1))
    scale = float(rng.uniform(0.01, 100))
    shift = torch.from_numpy(rng.normal(0, 50, dims))
    plain = path_scores(picture, references, base)
    moved = path_scores(picture * scale + shift, references * scale + shift, base * scale + shift)
    assert np.allclose(plain, moved, atol=1e-6)


def test_a_picture_like_its_references_scores_like_them_and_a_random_image_like_random() -> None:
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.normal(size=(24, 12)))
    direction = torch.from_numpy(rng.normal(size=12)) * 3
    references = direction + torch.from_numpy(rng.normal(0, 0.3, (5, 12)))
    like, random, own = path_scores(direction[None], references, base)
    assert like > 0.9 and own > 0.8 and abs(random) < 0.5
    unlike, _, _ = path_scores(base[:1], references, base)
    assert unlike < like - 0.4


def test_the_main_picture_and_top_examples_are_read_as_the_site_reads_them() -> None:
    render = pa.table(
        {
            "channel": [3, 3, 3, 4, 4, -1],
            "objective": ["diversity", "neuron", "negative", "diversity", "diversity", "direction"],
            "variant": [0, 0, 0, 1, 0, 0],
            "image": [b"d3", b"n3", b"x3", b"d4-1", b"d4-0", b"dir"],
        }
    )
    assert main_images(render) == {3: b"n3", 4: b"d4-0"}
    examples = pa.table(
        {
            "channel": [3, 3, 3, 3, 4, -1],
            "bucket": ["max", "max", "min", "max", "max", "max"],
            "rank": [2, 0, 0, 1, 0, 0],
            "source_id": ["c", "a", "low", "b", "e", "dir"],
        }
    )
    assert top_examples(examples, 2) == {3: ["a", "b"], 4: ["e"]}


def _job(folder: Path, model: str) -> Path:
    spec = folder / f"{model}.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [job]
            out = "{folder / ("out-" + model)}"
            [model]
            name = "module:fooling:{model}"
            [[layers]]
            name = "unit"
            channels = [0, 1]
            [render]
            steps = 64
            objectives = ["channel"]
            [examples]
            source = "photos"
            k = 6
            [interactions]
            random_directions = 0
            """
        )
    )
    return spec


@pytest.fixture(scope="module")
def fooling_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fooling import write_photos

    folder = tmp_path_factory.mktemp("fooling")
    shutil.copy(HERE / "fooling.py", folder / "fooling.py")
    write_photos(folder / "photos")
    for model in ("fooled", "twin"):
        result = CliRunner().invoke(main, ["run", str(_job(folder, model)), "--no-site"])
        assert result.exit_code == 0, result.output
    return folder


def test_a_planted_fooling_circuit_is_flagged_and_its_twin_is_not(fooling_runs: Path) -> None:
    records, tops = {}, {}
    for model in ("fooled", "twin"):
        store = open_store(fooling_runs / f"out-{model}")
        trust = store.read("trust").to_pylist()
        assert sorted(row["channel"] for row in trust) == [0, 1]
        records[model] = layer_records(store, "unit")[0]
        tops[model] = top_examples(store.read("examples"), 6)[0]
    assert tops["fooled"] == tops["twin"]  # photos cannot tell the two models apart
    assert "natural_path" in flags(records["fooled"]), records["fooled"]
    assert "natural_path" not in flags(records["twin"]), records["twin"]
    assert records["twin"]["natural_path"] > records["fooled"]["natural_path"] + 0.2
    # the fooled picture still reaches more than any photo: activation alone would trust it
    assert records["fooled"]["relative_activation"] > 1


def test_trust_units_are_stored_work_a_rerun_skips(fooling_runs: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(fooling_runs / "twin.toml"), "--no-site"])
    assert result.exit_code == 0 and "0 units done" in result.output, result.output
