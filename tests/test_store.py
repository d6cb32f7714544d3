"""The store: shards round-trip through Parquet, corrupt shards are detected, stale ones pruned."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas.store import Store, StoreError


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
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {u["key"] for u in manifest["units"]} == {"k1", "k2"}
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
    store.record_failure("k1", "render", "l1", "NaN at step 3")
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


def test_manifest_stays_valid_json_across_updates(tmp_path):
    store = Store(tmp_path)
    for i in range(5):
        store.write_unit(f"k{i}", "render", "l1", table(1))
    store.record_failure("k2", "render", "l1", "boom")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [u["status"] for u in manifest["units"]] == ["done", "done", "failed", "done", "done"]
