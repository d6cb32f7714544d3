"""The store: shards round-trip through Parquet, corrupt shards are detected, stale ones pruned."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas.store.lease import LeaseError
from atlas.store.location import LocationError
from atlas.store.retention import apply_retention
from atlas.store.store import Store, StoreError, UnitRecord


def table(n: int, layer: str = "l1") -> pa.Table:
    return pa.table({"layer": [layer] * n, "channel": pa.array(range(n), pa.int32())})


def test_write_read_and_reopen(tmp_path):
    store = Store(tmp_path)
    store.write_unit("k1", "render", "l1", table(3), channels=(0, 1, 2))
    store.write_unit_tables("k2", "examples", "l2", {"examples": table(2, "l2"), "histogram": table(1, "l2")})
    reopened = Store(tmp_path)
    assert reopened.has("k1") and reopened.has("k2")
    assert reopened.read("render").num_rows == 3
    assert reopened.read("histogram", layer="l2").num_rows == 1
    assert reopened.read("render", layer="l2") is None
    assert reopened.layers("examples") == ["l2"]
    assert pq.read_table(tmp_path / "shards" / "render" / "k1.parquet").column("channel").to_pylist() == [
        0,
        1,
        2,
    ]
    assert {u["key"] for u in journal_lines(tmp_path)} == {"k1", "k2"}
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind


def test_corrupt_or_missing_shard_is_not_done(tmp_path):
    store = Store(tmp_path)
    store.write_unit("k1", "render", "l1", table(3))
    shard = tmp_path / "shards" / "render" / "k1.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    assert not Store(tmp_path).has("k1")
    shard.unlink()
    assert not Store(tmp_path).has("k1")


def test_failures_are_recorded_and_overwritten_by_success(tmp_path):
    store = Store(tmp_path)
    store.commit(UnitRecord.failed("k1", "render", "l1", "NaN at step 3"))
    assert store.is_failed("k1") and not store.has("k1")
    assert Store(tmp_path).entry("k1").reason == "NaN at step 3"
    store.write_unit("k1", "render", "l1", table(1))
    assert store.has("k1") and not store.is_failed("k1")


def test_prune_removes_stale_units(tmp_path):
    store = Store(tmp_path)
    store.write_unit("old", "render", "l1", table(1))
    store.write_unit("new", "render", "l1", table(2))
    assert store.prune(keep={"new"}) == 1
    assert not (tmp_path / "shards" / "render" / "old.parquet").exists()
    assert Store(tmp_path).read("render").num_rows == 2


def test_bad_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="delete it"):
        Store(tmp_path)


def test_stray_temporary_files_are_swept(tmp_path):
    store = Store(tmp_path)
    store.write_unit("k1", "render", "l1", table(1))
    stray = tmp_path / "shards" / "render" / ".k2.parquet.abc.tmp"
    stray.write_bytes(b"half a shard")
    assert store.sweep_temporary() == 1
    assert not stray.exists() and store.has("k1")


def test_journal_appends_one_line_per_record(tmp_path):
    store = Store(tmp_path)
    for i in range(5):
        store.write_unit(f"k{i}", "render", "l1", table(1))
    store.commit(UnitRecord.failed("k2", "render", "l1", "boom"))
    assert [(u["key"], u["status"]) for u in journal_lines(tmp_path)][-2:] == [
        ("k4", "done"),
        ("k2", "failed"),
    ]
    assert [e.status for e in Store(tmp_path).entries()] == ["done", "done", "failed", "done", "done"]


def test_torn_last_line_is_not_a_record(tmp_path):
    store = Store(tmp_path)
    store.write_unit("k1", "render", "l1", table(1))
    store.release()
    (chunk,) = (tmp_path / "journal").glob("chunk-*.jsonl")
    with chunk.open("a") as handle:
        handle.write('{"key": "k2", "kind": "ren')  # the driver died mid-write
    assert [e.key for e in Store(tmp_path).entries()] == ["k1"]


def test_compaction_keeps_every_record_and_drops_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("atlas.store.journal.COMPACT_MIN_LINES", 4)
    store = Store(tmp_path)
    for i in range(10):
        store.write_unit(f"k{i}", "render", "l1", table(1))
        store.release()  # every run of a writer starts a new chunk
    store.forget(["k3"])
    snapshots = list((tmp_path / "journal").glob("snapshot-*.jsonl"))
    assert len(snapshots) == 1 and len(list((tmp_path / "journal").glob("chunk-*.jsonl"))) <= 4
    assert sorted(e.key for e in Store(tmp_path).entries()) == [f"k{i}" for i in range(10) if i != 3]


def test_legacy_manifest_store_opens_and_converts(tmp_path):
    Store(tmp_path).write_unit("k1", "render", "l1", table(2), channels=(0, 1))
    record = journal_lines(tmp_path)[0]
    shutil.rmtree(tmp_path / "journal")
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "units": [record]}))
    old = Store(tmp_path)
    assert old.has("k1") and old.read("render").num_rows == 2 and not old.pending(["k1"])
    old.acquire()  # the writer turns it into a journal snapshot
    old.release()
    assert not (tmp_path / "manifest.json").exists()
    assert Store(tmp_path).entry("k1").channels == (0, 1)


def test_rerun_trusts_sizes_and_verify_reads_checksums(tmp_path):
    store = Store(tmp_path)
    store.write_unit("k1", "render", "l1", table(3))
    store.write_unit("k2", "render", "l1", table(3))
    shard = tmp_path / "shards" / "render" / "k1.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))  # same size: only a checksum notices
    reopened = Store(tmp_path)
    assert reopened.pending(["k1", "k2", "k3"]) == ["k3"]
    assert reopened.verify() == ["k1"]
    with pytest.raises(StoreError, match="atlas verify"):
        reopened.read_unit("k1", "render")


def test_second_driver_is_refused_until_the_first_releases(tmp_path):
    first, second = Store(tmp_path), Store(tmp_path)
    first.acquire()
    with pytest.raises(LeaseError, match="in use by another atlas driver"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_uncommitted_shards_are_cleaned_up_by_the_next_driver(tmp_path):
    store = Store(tmp_path)
    store.write_unit("k1", "render", "l1", table(1))
    store.write_shards("k2", {"render": table(1)})  # staged, never committed
    (tmp_path / "shards" / "render" / "k3.parquet").write_bytes(b"moved, not journaled")
    driver = Store(tmp_path)
    driver.acquire()
    driver.release()
    assert sorted(p.name for p in (tmp_path / "shards" / "render").iterdir()) == ["k1.parquet"]
    assert not list(tmp_path.rglob("*.staged"))


def journal_lines(root) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((root / "journal").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_retention_keeps_the_units_of_the_last_runs(tmp_path):
    store = Store(tmp_path)
    for run, keys in enumerate((["a", "b"], ["b", "c"], ["d"])):
        for key in keys:
            store.write_unit(key, "render", "l1", table(1))
        pruned = apply_retention(store, keys, keep_runs=2)
        assert pruned == (1 if run == 2 else 0)  # the third run drops "a", which only the first planned
    assert sorted(e.key for e in Store(tmp_path).entries()) == ["b", "c", "d"]
    assert apply_retention(store, ["d"], keep_runs=1) == 2  # today's rule: only the current plan
    assert apply_retention(store, [], keep_runs=0) == 0  # keep everything
    assert [e.key for e in Store(tmp_path).entries()] == ["d"]


def test_pending_checks_sizes_cheaply_and_checksums_when_asked(tmp_path):
    store = Store(tmp_path)
    for key in ("k1", "k2", "k3"):
        store.write_unit(key, "render", "l1", table(3))
    store.commit(UnitRecord.failed("k4", "render", "l1", "boom"))
    shard = tmp_path / "shards" / "render"
    (shard / "k1.parquet").write_bytes((shard / "k1.parquet").read_bytes()[:-5])  # truncated
    flipped = bytearray((shard / "k2.parquet").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (shard / "k2.parquet").write_bytes(bytes(flipped))  # same size, damaged
    keys = ["k1", "k2", "k3", "k4", "k5"]
    assert store.pending(keys) == ["k1", "k4", "k5"]
    assert store.pending(keys, verify=True) == ["k1", "k2", "k4", "k5"]
    assert store.verify(keys) == ["k1", "k2"]
    assert store.pending(["k3"], force=True) == ["k3"]


def test_shards_are_invisible_until_committed(tmp_path):

    store = Store(tmp_path)
    shards = store.write_shards("k1", {"examples": table(2), "histogram": table(1)})
    assert shards["examples"]["size"] == (tmp_path / shards["examples"]["staged"]).stat().st_size
    assert store.pending(["k1"]) == ["k1"] and store.layers("examples") == []
    with pytest.raises(StoreError, match="no finished 'examples' table"):
        store.read_unit("k1", "examples")
    store.commit(UnitRecord.done("k1", "examples", "l1", shards, channels=(0, 1)))
    store.flush()
    reopened = Store(tmp_path)
    assert reopened.pending(["k1"]) == [] and reopened.entry("k1").rows == 2
    assert reopened.read_unit("k1", "examples", columns=["channel"]).column_names == ["channel"]


def test_read_layer_yields_one_unit_at_a_time(tmp_path):
    store = Store(tmp_path)
    store.write_unit("a", "render", "l1", table(2))
    store.write_unit("b", "render", "l2", table(1, "l2"))
    store.write_unit("c", "render", "l1", table(3))
    assert [t.num_rows for t in store.read_layer("render", "l1")] == [2, 3]
    assert list(store.read_layer("examples", "l1")) == []


def test_open_store_takes_paths_and_file_uris(tmp_path):
    from atlas.store.store import open_store

    Store(tmp_path).write_unit("k1", "render", "l1", table(1))
    by_uri = open_store(tmp_path.as_uri())
    assert by_uri.uri == tmp_path.resolve().as_uri() == open_store(str(tmp_path)).uri
    assert by_uri.pending(["k1"]) == []
    with pytest.raises(LocationError, match="nosuch:// is not a file system"):
        open_store("nosuch://host/atlas")


def test_old_manifests_still_load(tmp_path):
    Store(tmp_path).write_unit("k1", "render", "l1", table(1))
    manifest = {"version": 1, "units": journal_lines(tmp_path)}
    shutil.rmtree(tmp_path / "journal")
    for unit in manifest["units"]:  # as written before shard sizes were recorded
        unit["extra"] = {}
        for info in unit["tables"].values():
            del info["size"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = Store(tmp_path)
    assert store.pending(["k1"]) == [] and store.read_unit("k1", "render").num_rows == 1


def test_a_scheme_pyarrow_lacks_goes_through_fsspec():
    """fsspec's in-memory file system stands for any fsspec driver (abfs://, hdfs://, ...)."""
    pytest.importorskip("fsspec")
    writer = Store("memory://atlas/fsspec", group_units=2, group_seconds=3600)
    writer.acquire()
    for i in range(3):
        writer.write_unit(f"k{i}", "render", "l1", pa.table({"channel": [i]}))
    assert [e.key for e in Store("memory://atlas/fsspec").entries()] == ["k0", "k1"]  # k2's group is open
    writer.release()
    reader = Store("memory://atlas/fsspec")
    assert reader.uri == "memory://atlas/fsspec" and reader.pending(["k0", "k1", "k2", "k3"]) == ["k3"]
    assert (
        reader.dataset("render").count_rows() == 3
        and reader.read_unit("k2", "render")["channel"][0].as_py() == 2
    )
