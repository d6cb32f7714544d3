"""Label enrichment of a unit's top images (atlas/site/labels.py): exact chances, ImageFolder labels,
and a job whose colour detectors are enriched for the folder of their colour."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from atlas.cli import main
from atlas.site.labels import enrichment, label_counts, upper_tail

HERE = Path(__file__).resolve().parent


@given(population=st.integers(1, 9), data=st.data())
def test_the_chance_is_the_share_of_draws_with_that_many_hits(population: int, data) -> None:
    successes = data.draw(st.integers(0, population))
    draws = data.draw(st.integers(1, population))
    hits = data.draw(st.integers(0, draws))
    marked = set(range(successes))
    subsets = list(itertools.combinations(range(population), draws))
    expected = sum(len(marked.intersection(s)) >= hits for s in subsets) / len(subsets)
    assert upper_tail(hits, draws, successes, population) == pytest.approx(expected)


def test_labels_come_from_imagefolder_paths_only() -> None:
    assert label_counts(["cat/1.jpg", "dog/2.jpg", "cat/sub/3.png"]) == {"cat": 2, "dog": 1}
    assert label_counts(["cat/1.jpg", "top.jpg"]) == {}  # not every image has a label
    assert label_counts(["cat/1.jpg", "cat/2.jpg"]) == {}  # one label tells nothing
    assert label_counts(["data.parquet#row0", "data.parquet#row1"]) == {}


def test_the_most_significant_label_wins_over_the_most_frequent() -> None:
    counts = {"common": 90, "rare": 10}
    top = ["common/a", "common/b", "common/c", "rare/d", "rare/e", "rare/f"]
    label, hits, draws, share, chance = enrichment(top, counts)
    assert (label, hits, draws, share) == ("rare", 3, 6, 0.1) and chance < 0.02
    assert enrichment(["elsewhere/x"], counts) is None


def test_a_colour_detectors_top_images_are_enriched_for_their_folder(tmp_path: Path) -> None:
    from fooling import write_photos

    photos = write_photos(tmp_path / "flat", count=36)
    for index, path in enumerate(sorted(photos.glob("*.png"))):  # red disks are every third image
        folder = tmp_path / "photos" / ("red" if index % 3 == 0 else "other")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(path, folder / path.name)
    shutil.copy(HERE / "fooling.py", tmp_path / "fooling.py")
    spec = tmp_path / "job.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [job]
            out = "{tmp_path / "out"}"
            [model]
            name = "module:fooling:twin"
            [[layers]]
            name = "unit"
            channels = [0, 1]
            [render]
            enabled = false
            [examples]
            source = "photos"
            k = 6
            [interactions]
            random_directions = 0
            """
        )
    )
    result = CliRunner().invoke(main, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "job.json").read_text())["labels"] == {"other": 24, "red": 12}
    page = (tmp_path / "out" / "site" / "unit.html").read_text()
    labels = {
        int(c): json.loads(v) for v, c in re.findall(r"data-label='(\[[^']*\])' id=\"channel-(\d+)\"", page)
    }
    assert sorted(labels) == [0, 1]
    assert labels[0][:3] == ["red", 6, 6] and labels[0][4] < 0.01  # the redness detector's top six: red disks
    assert labels[1][0] == "other"  # the greenness channel's: green stripes
