"""Sources behind pyarrow.fs: a bucket prefix on a real S3 protocol server (moto) and a folder of
Parquet shards; both must scan exactly like the same images in a plain folder."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas.data.formats import FileSystemSource
from atlas.data.open import open_source
from atlas.data.source import FolderSource, SourceError
from atlas.kinds.examples import scan_shard
from atlas.models import load_model


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    demo = open_source("demo")
    for index, source_id in enumerate(demo.ids()[::11][:7]):
        demo.load(source_id).resize((70, 50)).save(folder / f"p{index}.jpg")
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def bucket(photos: Path):
    """s3://atlas-test/photos/ holding the photos, on a moto server at 127.0.0.1."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="atlas-test")
        for path in sorted(photos.rglob("*.*")):
            client.put_object(
                Bucket="atlas-test",
                Key=f"photos/{path.relative_to(photos).as_posix()}",
                Body=path.read_bytes(),
            )
        yield f"s3://atlas-test/photos?endpoint_override={host}:{port}&scheme=http"
    server.stop()


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
    from PIL import Image

    return Image.open(io.BytesIO(path.read_bytes())).convert("RGB").tobytes()
