"""The store: shards round-trip through Parquet, corrupt shards are detected, stale ones pruned."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas.store import Store, StoreError, UnitRecord


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


def test_manifest_stays_valid_json_across_updates(tmp_path):
    store = Store(tmp_path)
    for i in range(5):
        store.write_unit(f"k{i}", "render", "l1", table(1))
    store.commit(UnitRecord.failed("k2", "render", "l1", "boom"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [u["status"] for u in manifest["units"]] == ["done", "done", "failed", "done", "done"]


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
    assert shards["examples"]["size"] == (tmp_path / shards["examples"]["path"]).stat().st_size
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
    from atlas.store import open_store

    Store(tmp_path).write_unit("k1", "render", "l1", table(1))
    by_uri = open_store(tmp_path.as_uri())
    assert by_uri.uri == tmp_path.resolve().as_uri() == open_store(str(tmp_path)).uri
    assert by_uri.pending(["k1"]) == []
    with pytest.raises(StoreError, match="ftp:// stores are not supported"):
        open_store("ftp://host/atlas")


def test_old_manifests_still_load(tmp_path):
    Store(tmp_path).write_unit("k1", "render", "l1", table(1))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for unit in manifest["units"]:  # as written before shard sizes were recorded
        unit["extra"] = {}
        for info in unit["tables"].values():
            del info["size"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = Store(tmp_path)
    assert store.pending(["k1"]) == [] and store.read_unit("k1", "render").num_rows == 1
