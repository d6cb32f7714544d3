"""A store in gs://: a GCS emulator (gcp-storage-emulator) on 127.0.0.1, pyarrow's GcsFileSystem."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from click.testing import CliRunner
from gcsserver import gcs_server
from raytools import local_ray, write_spec

from atlas.cli import main
from atlas.store.store import Store


@pytest.fixture(scope="module")
def gcs():
    with gcs_server() as filesystem:
        yield filesystem


def test_units_commit_to_gcs_and_only_committed_ones_are_read(gcs) -> None:
    store = Store("gs://atlas/units", group_units=2, group_seconds=3600)
    store.acquire()
    for i in range(3):
        store.write_unit(f"k{i}", "render", "l1", _table(i + 1))
    assert sorted(e.key for e in Store("gs://atlas/units").entries()) == ["k0", "k1"]  # k2's group is open
    store.release()
    again = Store("gs://atlas/units")
    assert again.dataset("render").count_rows() == 6 and again.pending(["k0", "k1", "k2"]) == []
    assert not [i.path for i in _files(gcs, "atlas/units") if i.path.endswith((".staged", "lease.json"))]


@pytest.mark.slow
def test_tiny_job_into_gcs_reruns_nothing_and_reads_back(gcs, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = write_spec(tmp_path / "job.toml", "gs://atlas/tiny", channels="0:2", workers=1)
    with local_ray():  # started after the emulator: its workers see STORAGE_EMULATOR_HOST
        first = CliRunner().invoke(main, ["run", str(spec), "--no-site"])
        assert first.exit_code == 0, first.output
        assert "2 units done, 0 already done" in first.output
        second = CliRunner().invoke(main, ["run", str(spec), "--no-site"])
        assert "0 units done, 2 already done" in second.output, second.output
    renders = Store("gs://atlas/tiny").dataset("render").to_table(columns=["layer", "channel", "image"])
    assert sorted(renders.column("channel").to_pylist()) == [0, 1]
    assert all(png.startswith(b"\x89PNG") for png in renders.column("image").to_pylist())
    shards = [i.path for i in _files(gcs, "atlas/tiny/shards")]
    assert len(shards) == 4 and all(p.endswith(".parquet") for p in shards)  # render + quality per unit


def _table(n: int) -> pa.Table:
    return pa.table({"layer": ["l1"] * n, "channel": pa.array(range(n), pa.int32())})


def _files(gcs: pafs.GcsFileSystem, prefix: str) -> list[pafs.FileInfo]:
    infos = gcs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File]
