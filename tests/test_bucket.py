"""Stores, runs and sites in a bucket: a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray
from click.testing import CliRunner
from PIL import Image
from raytools import env_with_tests_on_path, local_ray, write_spec
from s3server import SECRET, s3_server

from atlas.cli import main
from atlas.plan.spec import parse_spec
from atlas.site.publish import publish_site
from atlas.store.lease import LeaseError
from atlas.store.location import Location, LocationError, parse_out
from atlas.store.store import Store, StoreError


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


def table(n: int, layer: str = "l1") -> pa.Table:
    return pa.table({"layer": [layer] * n, "channel": pa.array(range(n), pa.int32())})


def test_out_uri_is_a_bucket_prefix_not_a_local_folder(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(
        '[job]\nout = "s3://atlas/nightly"\n[model]\nname = "tiny-cnn"\n[[layers]]\nname = "conv2"\n'
    )
    assert spec.out == "s3://atlas/nightly"
    store = Store(spec.out)
    store.write_unit("k1", "render", "l1", table(2))
    store.flush()  # the end of a commit group
    assert "nightly/shards/render/k1.parquet" in s3.objects()
    assert not list(tmp_path.iterdir())  # no folder named "s3:"
    assert Store("s3://atlas/nightly/").read("render").num_rows == 2


def test_credentials_in_the_uri_are_refused():
    with pytest.raises(LocationError, match="environment") as err:
        parse_out(f"s3://key:{SECRET}@atlas/x")
    assert SECRET not in str(err.value)


def test_readers_see_only_committed_groups(s3):
    writer = Store("s3://atlas/groups", group_units=3, group_seconds=3600)
    writer.write_unit("k1", "render", "l1", table(1))
    writer.write_unit("k2", "render", "l1", table(1))
    reader = Store("s3://atlas/groups")
    assert reader.entries() == [] and reader.read("render") is None
    staged = [k for k in s3.objects() if k.startswith("groups/shards/")]
    assert staged and not [k for k in staged if k.endswith(".parquet")]  # staged: no glob sees them
    writer.write_unit("k3", "render", "l1", table(1))  # the group is full: committed
    assert [e.key for e in Store("s3://atlas/groups").entries()] == ["k1", "k2", "k3"]


def test_killed_driver_loses_at_most_the_open_group(s3, tmp_path):
    script = """
import os, signal, pyarrow as pa
from atlas.store.store import Store
store = Store("s3://atlas/killed", group_units=2, group_seconds=3600)
store.acquire()
for i in range(5):
    store.write_unit(f"k{i}", "render", "l1", pa.table({"channel": [i]}))
os.kill(os.getpid(), signal.SIGKILL)
"""
    driver = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ), capture_output=True, timeout=120
    )
    assert driver.returncode == -signal.SIGKILL, driver.stderr.decode()[-2000:]
    assert "killed/lease.json" in s3.objects()  # the dead driver's lease is still there
    assert [k for k in s3.objects() if k.startswith("killed/shards/render/.k4.")]  # and its staged unit
    rerun = Store("s3://atlas/killed")
    rerun.acquire()  # its holder is gone: taken over, leftovers cleaned
    assert sorted(e.key for e in rerun.entries()) == ["k0", "k1", "k2", "k3"]
    assert rerun.pending(["k0", "k3", "k4"]) == ["k4"]
    rerun.release()
    left = [k for k in s3.objects() if k.startswith("killed/")]
    assert not [k for k in left if k.endswith(".staged")] and "killed/lease.json" not in left
    assert sorted(k for k in left if "/shards/" in k) == [
        f"killed/shards/render/k{i}.parquet" for i in range(4)
    ]


def test_second_driver_gets_a_clear_message(s3):
    first, second = Store("s3://atlas/busy"), Store("s3://atlas/busy")
    first.acquire()
    try:
        with pytest.raises(LeaseError, match=r"in use by another atlas driver .*pid \d+"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_corrupted_or_missing_object_is_recomputed_never_used(s3, monkeypatch):
    store = Store("s3://atlas/corrupt")
    for i in range(4):
        store.write_unit(f"k{i}", "render", "l1", table(4))
    store.flush()
    keys = ["k0", "k1", "k2", "k3"]
    damaged = "corrupt/shards/render/k1.parquet"
    data = bytearray(s3.objects()[damaged])
    data[len(data) // 2] ^= 0xFF  # same size: only the ETag (the MD5) tells
    s3.client().put_object(Bucket=s3.bucket, Key=damaged, Body=bytes(data))
    s3.client().delete_object(Bucket=s3.bucket, Key="corrupt/shards/render/k2.parquet")
    reads: list[str] = []
    read_bytes = Location.read_bytes
    monkeypatch.setattr(Location, "read_bytes", lambda self, rel: reads.append(rel) or read_bytes(self, rel))
    assert Store("s3://atlas/corrupt").pending(keys) == ["k1", "k2"]
    assert [r for r in reads if r.startswith("shards/")] == ["shards/render/k1.parquet"]  # no other download
    with pytest.raises(StoreError, match="damaged"):
        Store("s3://atlas/corrupt").read_unit("k1", "render")  # a reader never uses it either
    result = CliRunner().invoke(main, ["verify", "s3://atlas/corrupt"])
    assert result.exit_code == 1 and "2 of 4 units intact" in result.output and "damaged" in result.output
    assert Store("s3://atlas/corrupt").pending(keys) == ["k1", "k2"]  # forgotten: recomputed next run


def test_duckdb_and_pandas_read_committed_shards(s3):
    store = Store("s3://atlas/readers", group_units=2, group_seconds=3600)
    for i, layer in enumerate(["a", "a", "b"]):
        store.write_unit(f"k{i}", "render", layer, table(i + 1, layer))
    renders = Store("s3://atlas/readers").dataset("render")  # k2 is not committed yet
    counts = duckdb.sql("SELECT layer, count(*) AS n FROM renders GROUP BY layer ORDER BY layer").fetchall()
    assert counts == [("a", 3)]
    store.flush()
    renders = Store("s3://atlas/readers").dataset("render")
    frame = renders.to_table(columns=["layer", "channel"]).to_pandas()
    assert sorted(frame["layer"]) == ["a", "a", "a", "b", "b", "b"]
    location = store.location
    one = pd.read_parquet(location.path("shards/render/k2.parquet"), filesystem=location.fs)
    assert one["channel"].tolist() == [0, 1, 2]


def fake_site(folder, marker: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(f"<!doctype html><script src='data.js'></script>{marker}")
    (folder / "data.js").write_text(f"var built = '{marker}';")
    (folder / "style.css").write_text("body { color: black }")
    return folder / "index.html"


def test_publish_switches_atomically_for_a_polling_reader(s3, tmp_path):
    sites = [fake_site(tmp_path / name, name) for name in ("blue", "green")]
    s3.make_public("www/")
    publish_site(sites[0], "s3://atlas/www", keep=2)
    seen: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll():
        try:
            read_until_stopped()
        except BaseException as err:  # noqa: BLE001 (reported by the test below)
            errors.append(err)

    def read_until_stopped():
        while not stop.is_set():
            entry, kind = s3.http("www/index.html")
            assert kind.startswith("text/html")
            href = re.search(rb'url=([^"]+)"', entry).group(1).decode()
            page, _ = s3.http(f"www/{href}")
            script, script_type = s3.http(f"www/{href.rsplit('/', 1)[0]}/data.js")
            assert script_type.startswith("text/javascript")
            seen.append((page.decode().rsplit(">", 1)[1], script.decode().split("'")[1]))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for round_ in range(6):
            publish_site(sites[(round_ + 1) % 2], "s3://atlas/www", keep=2)
    finally:
        stop.set()
        reader.join()
    assert seen and all(
        page == script for page, script in seen
    )  # never one version's page with another's data
    assert {page for page, _ in seen} == {"blue", "green"}
    versions = {k.split("/")[2] for k in s3.objects() if k.startswith("www/versions/")}
    assert len(versions) == 2
    _, css_type = s3.http(f"www/versions/{sorted(versions)[-1]}/style.css")
    assert css_type.startswith("text/css")
    assert json.loads(s3.objects()["www/current.json"])["version"] in versions


JOB = """
[job]
name = "bucket"
out = "s3://atlas/job"
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
channels = "0:3"
[render]
steps = 4
size = 32
batch = 2
objectives = ["channel"]
channels_per_unit = 1
[examples]
source = "{photos}"
k = 2
shard_size = 4
batch_size = 4
crop_size = 16
thumb_size = 16
bins = 8
[execute]
workers = 2
"""


@pytest.mark.slow
def test_tiny_job_into_a_bucket_reruns_nothing_and_publishes(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), np.uint8)).save(
            photos / f"{i}.png"
        )
    spec_path = tmp_path / "job.toml"
    spec_path.write_text(JOB.format(photos=photos))

    def driver_writes(self, key, tables):
        raise AssertionError(
            f"workers reach the bucket: unit {key}'s {sorted(tables)} passed through the driver"
        )

    with local_ray():
        with monkeypatch.context() as patch:
            # Every shard (renders, scan partials, examples) is staged by a Ray worker or scan actor.
            patch.setattr(Store, "write_shards", driver_writes)
            first = CliRunner().invoke(main, ["run", str(spec_path)])
        assert first.exit_code == 0, first.output
        # 3 renders, 2 scans, 1 examples and 3 trust units (each render against the examples unit)
        assert "9 units done, 0 already done" in first.output
        second = CliRunner().invoke(main, ["run", str(spec_path), "--no-site"])
        assert "0 units done, 9 already done" in second.output, second.output
        session = Path(ray._private.worker._global_node.get_session_dir_path())
    objects = s3.objects()
    assert len([k for k in objects if k.startswith("job/shards/render/")]) == 3
    assert len([k for k in objects if k.startswith("job/shards/examples/")]) == 1
    assert not [k for k in objects if k.endswith(".staged")] and "job/lease.json" not in objects

    s3.make_public("job/site/")
    entry, _ = s3.http("job/site/index.html")
    href = re.search(rb'url=([^"]+)"', entry).group(1).decode()
    page, kind = s3.http(f"job/site/{href}")
    assert kind.startswith("text/html") and b"conv2" in page

    secret = SECRET.encode()
    assert not [key for key, data in objects.items() if secret in data]
    assert SECRET not in first.output + second.output
    written = [p for p in [*tmp_path.rglob("*"), *session.rglob("*")] if p.is_file() and not p.is_symlink()]
    assert not [p for p in written if secret in p.read_bytes()]


@pytest.mark.slow
def test_driver_killed_mid_job_rerun_completes_the_bucket_store(s3, tmp_path, monkeypatch):
    """A real `atlas run` into a bucket, killed once a group is committed; the rerun does the rest."""
    total = 12
    spec_path = write_spec(
        tmp_path / "slow.toml",
        "s3://atlas/killed-job",
        model="module:faultmodels:slow_cnn",
        layer="slow",
        channels=f"0:{total}",
        steps=8,
    )
    monkeypatch.setenv("ATLAS_TEST_SLOW_FORWARD", "0.4")  # read by the workers Ray starts below
    with local_ray() as address:
        log = tmp_path / "driver.log"
        env = env_with_tests_on_path() | {"RAY_ADDRESS": address}
        driver = subprocess.Popen(
            [sys.executable, "-m", "atlas.cli", "run", str(spec_path), "--no-site"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        try:
            deadline = time.monotonic() + 180
            while not Store("s3://atlas/killed-job").entries():  # the first group is put (10 s)
                assert driver.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the driver committed no group in 180 s"
                time.sleep(0.5)
        finally:
            driver.kill()
            driver.wait()
        survived = len(Store("s3://atlas/killed-job").entries())
        assert 0 < survived < total, "kill the driver mid-run: slow the units down if this fails"
        rerun = CliRunner().invoke(main, ["run", str(spec_path), "--no-site"])
    assert rerun.exit_code == 0, rerun.output
    assert f"{total - survived} units done, {survived} already done" in rerun.output
    store = Store("s3://atlas/killed-job")
    named = {info["path"] for e in store.entries() for info in e.tables.values()}
    assert len(store.entries()) == total and all(e.status == "done" for e in store.entries())
    left = {k.removeprefix("killed-job/") for k in s3.objects() if k.startswith("killed-job/shards/")}
    assert left == named  # nothing staged, nothing the dead driver wrote without a record
