"""Sources behind pyarrow.fs: a bucket prefix on a real S3 protocol server (moto) and a folder of
Parquet shards; both must scan exactly like the same images in a plain folder."""

from __future__ import annotations

import hashlib
import io
import itertools
import pickle
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from atlas.data.formats import FileSystemSource
from atlas.data.open import open_source
from atlas.data.source import FolderSource, SourceError
from atlas.kinds.examples import scan_shard
from atlas.models import load_model
from atlas.site.labels import enrichment, label_counts, label_of


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    demo = open_source("demo")
    for index, source_id in enumerate(demo.ids()[::11][:7]):
        demo.load(source_id).resize((70, 50)).save(folder / f"p{index}.jpg")
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.png").write_bytes(b"not a png")
    return folder


@dataclass
class Bucket:
    """The bucket `atlas-test` on a moto server at 127.0.0.1: a client, and URIs of its prefixes."""

    client: Any
    host: str
    port: int

    def upload(self, folder: Path, prefix: str) -> str:
        """Every file below `folder` under `prefix`; the s3:// URI of the prefix."""
        for path in sorted(folder.rglob("*.*")):
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            self.client.put_object(Bucket="atlas-test", Key=key, Body=path.read_bytes())
        return f"s3://atlas-test/{prefix}?endpoint_override={self.host}:{self.port}&scheme=http"


@pytest.fixture(scope="module")
def s3() -> Iterator[Bucket]:
    """The bucket on a moto server at 127.0.0.1, for the module."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket="atlas-test")
        yield Bucket(client, host, port)
    server.stop()


@pytest.fixture(scope="module")
def bucket(photos: Path, s3: Bucket) -> str:
    """s3://atlas-test/photos/ holding the photos."""
    return s3.upload(photos, "photos")


@pytest.mark.slow
def test_a_bucket_prefix_lists_decodes_and_scans_like_the_folder(photos: Path, bucket: str) -> None:
    source, folder = open_source(bucket), FolderSource(photos)
    assert isinstance(source, FileSystemSource) and source.ids() == folder.ids()
    good, counts = source.load_batch(source.ids())
    assert len(good) == 7 and counts["skipped:corrupt"] == 1
    model = load_model("tiny-cnn", weights="none")
    a = scan_shard(model, ["conv2"], source, source.shards(100)[0], k=2, batch_size=4)
    b = scan_shard(model, ["conv2"], folder, folder.shards(100)[0], k=2, batch_size=4)
    assert a.to_table().equals(b.to_table())
    assert [(s.source_id, s.reason) for s in a.skipped] == [(s.source_id, s.reason) for s in b.skipped]


def test_a_folder_of_parquet_shards_is_one_dataset(photos: Path, tmp_path: Path) -> None:
    images = sorted(photos.glob("*.jpg"))
    for shard in range(2):
        part = images[shard::2]
        rows = {
            "image": pa.array([p.read_bytes() for p in part], pa.binary()),
            "label": list(range(len(part))),
        }
        pq.write_table(pa.table(rows), tmp_path / f"train-{shard:05d}-of-00002.parquet", row_group_size=2)
    source = open_source(tmp_path)
    assert isinstance(source, FileSystemSource)
    assert source.ids()[:2] == ["train-00000-of-00002.parquet#row0", "train-00000-of-00002.parquet#row1"]
    assert len(source.ids()) == 7
    picked = ["train-00001-of-00002.parquet#row2", "train-00000-of-00002.parquet#row3", "nope.parquet#row0"]
    loaded = dict(source.load_many(picked))
    assert loaded["train-00001-of-00002.parquet#row2"].image.tobytes() == _decoded(images[5])
    assert loaded["train-00000-of-00002.parquet#row3"].image.tobytes() == _decoded(images[6])
    assert loaded["nope.parquet#row0"].reasons == ["skipped:missing"]
    before = source.fingerprint()
    (tmp_path / "train-00001-of-00002.parquet").unlink()
    assert FileSystemSource(str(tmp_path)).fingerprint() != before


def test_a_prefix_without_images_fails_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no images and no Parquet rows"):
        open_source(tmp_path)
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "numbers.parquet")
    with pytest.raises(SourceError, match="no binary image column.*examples.column"):
        open_source(tmp_path)


def _decoded(path: Path) -> bytes:
    return Image.open(io.BytesIO(path.read_bytes())).convert("RGB").tobytes()


# Label columns of Parquet shards (examples.label_column): labels of any text (`/`, spaces,
# unicode, empty) or integers, with nulls, in one or several shards of different lengths.
LABEL_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
    st.sampled_from(["a/b", "/", "big cat", "Maltese dog", "Ünïcödé 猫", "(none)x", " "]),
)
TEXT_TYPES = [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())]
INT_TYPES = [pa.int64(), pa.int32(), pa.int16()]


@st.composite
def labelled_shards(draw) -> tuple[list[list], pa.DataType]:
    """Shards' label columns (1-3 shards of 1-5 rows each) and the column's Arrow type."""
    if draw(st.booleans()):
        values, kind = st.one_of(LABEL_TEXT, st.none()), draw(st.sampled_from(TEXT_TYPES))
    else:
        values, kind = st.one_of(st.integers(-5, 1000), st.none()), draw(st.sampled_from(INT_TYPES))
    return draw(st.lists(st.lists(values, min_size=1, max_size=5), min_size=1, max_size=3)), kind


def expected_label(value: object) -> str:
    """The documented label part of an id: text or digits with `/` made `_`; null or empty: (none)."""
    return "(none)" if value is None or value == "" else str(value).replace("/", "_")


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _write_labelled(folder: Path, shards: list[list], kind: pa.DataType) -> dict[str, tuple]:
    """One Parquet file per shard (the third one in a subfolder); plain id -> (label, colour)."""
    rows = {}
    counter = itertools.count()
    for index, labels in enumerate(shards):
        rel = f"more/part-{index}.parquet" if index == 2 else f"part-{index}.parquet"
        colours = [(next(counter) * 9 % 256, index * 60, 200) for _ in labels]
        table = pa.table(
            {
                "image": pa.array([_png(c) for c in colours], pa.binary()),
                "label": pa.array(labels, kind),
                "other": list(range(len(labels))),
            }
        )
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / rel, row_group_size=2)
        for row, (label, colour) in enumerate(zip(labels, colours, strict=True)):
            rows[f"{rel}#row{row}"] = (label, colour)
    return rows


def _old_fingerprint(folder: Path, column: str | None = None) -> str:
    """FileSystemSource's fingerprint before label columns existed (content keys must keep it)."""
    digest = hashlib.sha256(f"{column}\n".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _check_labelled(source: FileSystemSource, plain: FileSystemSource, rows: dict[str, tuple]) -> None:
    ids = source.ids()
    assert ids == [f"{expected_label(rows[i][0])}/{i}" for i in plain.ids()]
    assert sorted(plain.ids()) == sorted(rows)
    loaded = dict(source.load_many(list(reversed(ids))))
    for source_id in ids:
        assert loaded[source_id].image.getpixel((0, 0)) == rows[source_id.partition("/")[2]][1]
    labels = [expected_label(label) for label, _ in rows.values()]
    real = set(labels) - {"(none)"}
    assert label_counts(ids) == (dict(sorted(Counter(labels).items())) if len(real) > 1 else {})
    assert plain.fingerprint() != source.fingerprint()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shards=labelled_shards())
def test_a_label_column_labels_every_row_of_a_folder_of_shards(
    tmp_path_factory: pytest.TempPathFactory, shards: tuple[list[list], pa.DataType]
) -> None:
    folder = tmp_path_factory.mktemp("shards")
    rows = _write_labelled(folder, *shards)
    plain, labelled = open_source(folder), open_source(folder, labels="label")
    assert isinstance(labelled, FileSystemSource) and labelled.label_column == "label"
    assert "_labels" not in labelled.__dict__  # opening (as every worker does) reads no label
    assert plain.fingerprint() == _old_fingerprint(folder)  # sources without labels: unchanged keys
    assert plain.ids() == [f"{rel}#row{row}" for rel, row in _plain_order(rows)]
    _check_labelled(labelled, plain, rows)
    shipped = pickle.loads(pickle.dumps(labelled))  # as workers get it: rows by id, not every label
    assert "_labels" not in shipped.__dict__
    assert [i for i, d in shipped.load_many(labelled.ids()) if d.image is not None] == labelled.ids()


def _plain_order(rows: dict[str, tuple]) -> list[tuple[str, int]]:
    parsed = [(i.partition("#row")[0], int(i.partition("#row")[2])) for i in rows]
    return sorted(parsed)


_PREFIXES = itertools.count()


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shards=labelled_shards())
def test_a_label_column_labels_every_row_under_a_bucket_prefix(
    tmp_path_factory: pytest.TempPathFactory, s3: Bucket, shards: tuple[list[list], pa.DataType]
) -> None:
    folder = tmp_path_factory.mktemp("shards")
    rows = _write_labelled(folder, *shards)
    uri = s3.upload(folder, f"labelled{next(_PREFIXES)}")
    plain, labelled = open_source(uri), open_source(uri, labels="label")
    assert isinstance(labelled, FileSystemSource)
    _check_labelled(labelled, plain, rows)
    assert labelled.ids() == open_source(folder, labels="label").ids()  # the bucket reads as the folder


@given(
    real=st.dictionaries(st.sampled_from(["cat", "dog", "7", "a b"]), st.integers(1, 6), min_size=1),
    unlabelled=st.integers(0, 6),
    data=st.data(),
)
def test_unlabelled_rows_count_in_the_dataset_but_are_never_a_features_label(
    real: dict[str, int], unlabelled: int, data
) -> None:
    dataset = [f"{label}/d.parquet#row{i}" for label, n in real.items() for i in range(n)]
    dataset += [f"(none)/d.parquet#row{i}" for i in range(unlabelled)]
    counts = label_counts(dataset)
    if len(real) < 2:
        assert counts == {}
        return
    assert counts == dict(sorted({**real, **({"(none)": unlabelled} if unlabelled else {})}.items()))
    top = data.draw(st.lists(st.sampled_from(dataset), min_size=1, max_size=len(dataset), unique=True))
    found = enrichment(top, counts)
    tops = Counter(label_of(i) for i in top)
    if not set(tops) - {"(none)"}:
        assert found is None
        return
    label, hits, draws, share, _ = found
    assert label != "(none)" and hits == tops[label] and draws == len(top)
    assert share == real[label] / (sum(real.values()) + unlabelled)


def _write(folder: Path, rel: str, columns: dict) -> None:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array([_png((1, 2, 3))] * 2, pa.binary()), **columns}), folder / rel)


BAD_LABELS = [
    (
        {"b.parquet": {"kind": ["x", "y"]}},
        r"b\.parquet has no label column 'label'; columns: image, kind\. Set examples.label_column",
    ),
    ({"a.parquet": {"label": [0.5, None]}}, r"a\.parquet is double, not text or integers \(pandas"),
    ({"b.parquet": {"label": [True, False]}}, r"b\.parquet is bool, not text or integers; set"),
    ({"b.parquet": {"label": [["x"], []]}}, r"b\.parquet is list<\w+: string>, not text or integers"),
    ({"b.parquet": {"label": [b"x", b"y"]}}, r"'label' of .*b\.parquet is binary, not text or integers"),
]


@pytest.mark.parametrize(("shards", "message"), BAD_LABELS)
@pytest.mark.parametrize("where", ["folder", "bucket"])
def test_a_bad_label_column_fails_naming_the_shard_and_the_fix(
    tmp_path: Path, s3: Bucket, where: str, shards: dict, message: str
) -> None:
    _write(tmp_path, "a.parquet", {"label": ["x", "y"]})
    for rel, columns in shards.items():
        _write(tmp_path, rel, columns)
    uri = str(tmp_path) if where == "folder" else s3.upload(tmp_path, f"bad{next(_PREFIXES)}")
    with pytest.raises(SourceError, match=message):
        open_source(uri, labels="label")
    assert open_source(uri).ids()  # without label_column the same shards are fine


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("demo", r"source is 'demo' \(the demo photos have no labels\); drop label_column"),
        (
            "images",
            r"is a folder of images; drop label_column \(an ImageFolder's labels are its folder names",
        ),
        (
            "mixed",
            r"also holds images \(p\.png\); drop label_column or point examples.source at a prefix of Parquet",
        ),
    ],
)
def test_a_label_column_needs_parquet_files(tmp_path: Path, make: str, message: str) -> None:
    if make == "images":
        Image.new("RGB", (20, 20)).save(tmp_path / "p.png")
        source = str(tmp_path)
    elif make == "mixed":  # a prefix of images and shards: shards only when labelled
        _write(tmp_path / "data", "a.parquet", {"label": ["x", "y"]})
        Image.new("RGB", (20, 20)).save(tmp_path / "data" / "p.png")
        source = f"file://{tmp_path / 'data'}"
    else:
        source = "demo"
    with pytest.raises(SourceError, match=message):
        open_source(source, labels="label")
