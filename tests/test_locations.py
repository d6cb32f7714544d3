"""One contract, every storage scheme: the same file operations behave alike on a local folder,
a real S3 server (moto), a GCS emulator and an fsspec file system (memory://), each one class
registered in `atlas.store.location.SCHEMES`; a new scheme is one class and one registration."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest
from gcsserver import gcs_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3server import s3_server

from atlas.core.registry import RegistryError
from atlas.store.location import (
    SCHEMES,
    FsspecPrefix,
    GcsPrefix,
    LocalFolder,
    Location,
    LocationError,
    S3Prefix,
    open_location,
)

SCHEME_NAMES = ["local", "s3", "gs", "memory"]


@pytest.fixture(scope="module")
def servers() -> Iterator[None]:
    with s3_server(), gcs_server():
        yield


@pytest.fixture(params=SCHEME_NAMES)
def place(request, servers, tmp_path) -> Location:
    """A fresh, empty location of each scheme."""
    name = uuid.uuid4().hex[:8]
    return {
        "local": lambda: open_location(tmp_path / f"a folder é {name}"),
        "s3": lambda: open_location(f"s3://atlas/{name}"),
        "gs": lambda: open_location(f"gs://atlas/{name}"),
        "memory": lambda: open_location(f"memory://atlas/{name}"),
    }[request.param]()


def test_each_scheme_opens_as_its_own_class(servers, tmp_path) -> None:
    assert type(open_location(tmp_path)) is LocalFolder and open_location(tmp_path).local
    assert type(open_location("s3://atlas/x")) is S3Prefix
    assert type(open_location("gs://atlas/x")) is GcsPrefix is type(open_location("gcs://atlas/x"))
    assert type(open_location("memory://atlas/x")) is FsspecPrefix
    assert not any(open_location(u).local for u in ("s3://atlas/x", "gs://atlas/x", "memory://atlas/x"))


def test_the_file_operations_behave_alike(place: Location) -> None:
    assert place.empty() and place.sizes("shards") == {} and not place.exists("job.json")
    place.write_bytes("job.json", b"{}")
    place.write_bytes("shards/render/a.parquet", b"1234")
    place.write_bytes("shards/render/b.parquet", b"12")
    assert not place.empty() and place.exists("job.json") and place.read_bytes("job.json") == b"{}"
    assert place.sizes("shards") == {"shards/render/a.parquet": 4, "shards/render/b.parquet": 2}
    assert {rel: size for rel, (size, _) in place.etags("shards").items()} == place.sizes("shards")
    place.write_bytes("job.json", b'{"v": 2}')  # replaced whole
    assert place.read_bytes("job.json") == b'{"v": 2}'
    place.move("shards/render/b.parquet", "shards/examples/b.parquet")
    assert sorted(place.sizes("shards")) == ["shards/examples/b.parquet", "shards/render/a.parquet"]
    assert place.create_exclusive("lease.json", b"mine") and not place.create_exclusive(
        "lease.json", b"yours"
    )
    assert place.read_bytes("lease.json") == b"mine"
    for rel in ("shards/render/a.parquet", "shards/examples/b.parquet", "lease.json", "job.json"):
        place.delete(rel)
    place.delete("never-written")  # deleting a missing file is not an error
    place.delete_empty_folder("shards")
    assert place.sizes("") == {} and place.url("x/y") == f"{place.uri}/x/y"


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(
        st.from_regex(r"[a-z0-9][a-z0-9_.\-]{0,20}", fullmatch=True), min_size=1, max_size=4, unique=True
    ),
    data=st.binary(max_size=256),
)
def test_any_key_and_payload_round_trip(place: Location, names: list[str], data: bytes) -> None:
    folder = uuid.uuid4().hex[:6]
    for name in names:
        place.write_bytes(f"{folder}/{name}", data)
    assert {rel: place.read_bytes(rel) for rel in place.sizes(folder)} == {
        f"{folder}/{n}": data for n in names
    }
    for name in names:
        place.delete(f"{folder}/{name}")
    assert place.sizes(folder) == {}


def test_an_unknown_scheme_names_itself_and_how_to_fix_it() -> None:
    with pytest.raises(LocationError, match=r"nosuch:// is not a file system fsspec knows here"):
        open_location("nosuch://bucket/prefix")


@dataclass
class _Tagged(FsspecPrefix):
    """A scheme added from outside the package: memory:// under another name."""

    @staticmethod
    def filesystem(scheme: str) -> pafs.FileSystem:
        return FsspecPrefix.filesystem("memory")


def test_a_new_scheme_is_one_class_and_one_registration(monkeypatch) -> None:
    monkeypatch.setattr(SCHEMES, "_entries", dict(SCHEMES._entries))  # registered for this test only
    SCHEMES.register("tagged", _Tagged)
    place = open_location("tagged://atlas/x")
    assert type(place) is _Tagged and place.uri == "tagged://atlas/x"
    place.write_bytes("a", b"z")
    assert place.read_bytes("a") == b"z"
    with pytest.raises(RegistryError):
        SCHEMES.register("s3", _Tagged)  # a scheme has one class
