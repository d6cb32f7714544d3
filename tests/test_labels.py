"""Label enrichment of a unit's top images (atlas/site/labels.py): exact chances, ImageFolder labels,
and a job whose colour detectors are enriched for the folder of their colour."""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from atlas.cli import main
from atlas.data.open import open_source
from atlas.data.source import SourceError, row_label
from atlas.site.labels import enrichment, label_counts, label_of, upper_tail

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


def _colour_dataset(tmp_path: Path, layout: str) -> str:
    """36 photos, every third a red disk, labelled "red" or "other": as ImageFolder class folders,
    or as rows of a Parquet file or of a folder of Parquet shards with a `colour` column. Returns
    the [examples] lines."""
    from fooling import write_photos

    photos = sorted(write_photos(tmp_path / "flat", count=36).glob("*.png"))
    labels = ["red" if index % 3 == 0 else "other" for index in range(len(photos))]
    if layout == "parquet":
        table = pa.table({"image": [path.read_bytes() for path in photos], "colour": labels})
        pq.write_table(table, tmp_path / "photos.parquet", row_group_size=10)
        return 'source = "photos.parquet"\nlabel_column = "colour"'
    if layout == "shards":  # a folder of shards of different lengths, as a large dataset comes
        (tmp_path / "shards").mkdir()
        for index, (start, stop) in enumerate([(0, 5), (5, 25), (25, 36)]):
            part = [path.read_bytes() for path in photos[start:stop]]
            table = pa.table({"image": part, "colour": labels[start:stop]})
            pq.write_table(
                table, tmp_path / "shards" / f"train-{index:05d}-of-00003.parquet", row_group_size=4
            )
        return 'source = "shards"\nlabel_column = "colour"'
    for path, label in zip(photos, labels, strict=True):
        folder = tmp_path / "photos" / label
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(path, folder / path.name)
    return 'source = "photos"'


@pytest.mark.parametrize("layout", ["folders", "parquet", "shards"])
def test_a_colour_detectors_top_images_are_enriched_for_their_label(tmp_path: Path, layout: str) -> None:
    source = _colour_dataset(tmp_path, layout)
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
            SOURCE
            k = 6
            [interactions]
            random_directions = 0
            """
        ).replace("SOURCE", source)
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


LABEL_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
LABEL_COLUMNS = st.one_of(  # a column of one type: text (any characters, `/` included) or class numbers
    st.lists(st.one_of(LABEL_TEXT, st.none()), min_size=2, max_size=12),
    st.lists(st.one_of(st.integers(-5, 1000), st.none()), min_size=2, max_size=12),
)


@settings(max_examples=20, deadline=None)
@given(labels=LABEL_COLUMNS, group=st.integers(1, 5))
def test_a_parquet_label_column_labels_every_row_it_loads(tmp_path_factory, labels: list, group: int) -> None:
    """Ids carry the row's label in the ImageFolder form; the images are the rows' own."""
    folder = tmp_path_factory.mktemp("parquet")
    pixels = [bytes([i * 20 % 256, 40, 200]) for i in range(len(labels))]
    images = []
    for colour in pixels:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), tuple(colour)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    column = pa.array(labels, pa.string() if any(isinstance(v, str) for v in labels) else None)
    pq.write_table(pa.table({"image": images, "label": column}), folder / "d.parquet", row_group_size=group)
    plain = open_source(folder / "d.parquet")
    labelled = open_source(folder / "d.parquet", labels="label")
    ids = labelled.ids()
    assert [label_of(i) for i in ids] == [row_label(v) for v in labels]
    assert all("/" not in row_label(v) for v in labels)
    assert [i.rpartition("/")[2] for i in ids] == plain.ids()
    assert plain.fingerprint() != labelled.fingerprint()
    loaded = dict(labelled.load_many(list(reversed(ids))))
    for source_id, colour in zip(ids, pixels, strict=True):
        assert loaded[source_id].image.getpixel((0, 0)) == tuple(colour)
    distinct = {row_label(v) for v in labels}
    real = distinct - {"(none)"}  # unlabelled rows count in the dataset but are not a label
    expected = dict(sorted(Counter(row_label(v) for v in labels).items())) if len(real) > 1 else {}
    assert label_counts(ids) == expected


def test_a_label_column_must_exist_and_belong_to_a_parquet_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": [b"x"], "label": ["a"]}), tmp_path / "d.parquet")
    with pytest.raises(SourceError, match=r"no label column 'labels'; columns: image, label"):
        open_source(tmp_path / "d.parquet", labels="labels")
    (tmp_path / "folder").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "folder" / "a.png")
    with pytest.raises(SourceError, match="drop label_column"):
        open_source(tmp_path / "folder", labels="label")
