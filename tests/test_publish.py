"""`atlas site OUT --publish DIR`: versioned prefixes, the entry page written last, old versions pruned."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raytools import env_with_tests_on_path
from s3server import s3_server
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

from atlas.cli import main
from atlas.site.publish import ENTRY, POINTER, RECORD, PublishError, content_type, publish_site
from atlas.store.location import open_location
from atlas.store.outdir import MARKER, claim_output

SMALL = SyntheticOptions(image_size=16, crop_size=12, examples_k=2, diversity=2, bins=8, channels_per_unit=4)


def test_publish_to_a_folder_keeps_the_newest_versions(tmp_path):
    store = write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    www = tmp_path / "www"
    published = []
    for night in range(3):
        store.write_job({**store.job(), "name": f"night {night}"})  # each build differs
        result = CliRunner().invoke(
            main, ["site", str(tmp_path / "out"), "--publish", str(www), "--keep", "2"]
        )
        assert result.exit_code == 0, result.output
        published.append(json.loads((www / "current.json").read_text())["version"])
    versions = sorted(p.name for p in (www / "versions").iterdir())
    assert len(set(published)) == 3 and versions == sorted(published[1:])
    href = re.search(r'url=([^"]+)"', (www / "index.html").read_text()).group(1)
    assert href == f"versions/{published[-1]}/index.html" and (www / href).is_file()
    assert "night 2" in (www / href).read_text()


def test_content_types_of_site_files():
    assert content_type("index.html") == "text/html; charset=utf-8"
    assert content_type("atlas.css").startswith("text/css")
    assert content_type("l.data.js").startswith("text/javascript")
    assert content_type("sprites/l/3.jpg") == "image/jpeg"
    assert content_type("build.json") == "application/json"


# -- the output-folder rules at a publish target, local and in a bucket ----------------------------


class Target:
    """A publish target with the files in it: a local folder, or a prefix on the S3 test server."""

    def __init__(self, uri: str, folder: Path | None = None, s3=None, prefix: str = ""):
        self.uri, self.folder, self.s3, self.prefix = uri, folder, s3, prefix

    def put(self, rel: str, data: bytes) -> None:
        if self.folder is not None:
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / rel).write_bytes(data)
        else:
            self.s3.client().put_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{rel}", Body=data)

    def names(self) -> list[str]:
        """Every file's name, relative to the target (a bucket's empty folder objects left out)."""
        if self.folder is not None:
            return [p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file()]
        pages = (
            self.s3.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.s3.bucket, Prefix=f"{self.prefix}/")
        )
        cut = len(self.prefix) + 1
        return [
            item["Key"][cut:]
            for page in pages
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
        ]

    def files(self) -> dict[str, bytes]:
        if self.folder is not None:
            return {rel: (self.folder / rel).read_bytes() for rel in self.names()}
        client = self.s3.client()
        return {
            rel: client.get_object(Bucket=self.s3.bucket, Key=f"{self.prefix}/{rel}")["Body"].read()
            for rel in self.names()
        }

    def versions(self) -> set[str]:
        return {rel.split("/")[1] for rel in self.names() if rel.startswith("versions/")}

    def folders(self) -> set[str]:
        """Every name below versions/, files or not (a bucket's empty folder objects included)."""
        if self.folder is not None:
            return {p.name for p in (self.folder / "versions").iterdir()}
        pages = (
            self.s3.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.s3.bucket, Prefix=f"{self.prefix}/versions/")
        )
        return {item["Key"].split("/")[2] for page in pages for item in page.get("Contents", [])} - {""}


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def make_target(request, tmp_path_factory):
    """A factory of fresh, empty targets of one kind (Hypothesis examples each get their own)."""
    if request.param == "local":
        base = tmp_path_factory.mktemp("targets")
        return lambda: Target(str(folder := base / uuid.uuid4().hex), folder=folder)
    server = request.getfixturevalue("s3")
    return lambda: Target(f"s3://{server.bucket}/{(prefix := uuid.uuid4().hex)}", s3=server, prefix=prefix)


def fake_site(folder: Path, tag: str) -> Path:
    """A small built site: pages, a script, a nested image, its own marker; `tag` tells builds apart."""
    (folder / "sprites").mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(f"<!doctype html><p>{tag}</p>")
    (folder / "layer.html").write_text(f"<!doctype html><p>layer {tag}</p>")
    (folder / "data.js").write_text(f"var built = '{tag}';")
    (folder / "sprites" / "0.png").write_bytes(b"\x89PNG" + tag.encode())
    (folder / ".neuron-atlas").write_text('{"writer": "neuron-atlas", "kind": "site"}\n')
    return folder / "index.html"


def site_files(index: Path) -> dict[str, bytes]:
    site = index.parent
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()}


def readers_versions(target: Target, index: Path | None = None) -> set[str]:
    """The versions readers are sent to (by the entry page, by current.json): each holds every
    file of its site, byte-identical. One version, but for a publish cut between the two writes."""
    files = target.files()
    entry = re.search(r'url=versions/([^/"]+)/index.html"', files[ENTRY].decode()).group(1)
    versions = {entry, json.loads(files[POINTER])["version"]}
    for version in versions:
        folder = f"versions/{version}/"
        published = {rel.removeprefix(folder): data for rel, data in files.items() if rel.startswith(folder)}
        assert json.loads(published.pop(RECORD))["complete"]
        if index is not None:
            assert published == site_files(index)
        else:
            assert set(published) == {"index.html", "layer.html", "data.js", "sprites/0.png", ".neuron-atlas"}
    return versions


def current_is_intact(target: Target, index: Path) -> str:
    """The one version readers are sent to, holding every file of `index`'s site."""
    (version,) = readers_versions(target, index)
    return version


SEGMENTS = (
    "versions",
    "2019",
    "2020",
    "2021",
    "index.html",
    "current.json",
    "site",
    "a b",
    "ü",
    "x.png",
    "sub",
)


@st.composite
def folder_contents(draw) -> dict[str, bytes]:
    """What a user's folder holds: names an atlas also writes (index.html, versions/2019, ...), nested."""
    paths = draw(
        st.lists(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4), min_size=1, max_size=8)
    )
    names = sorted({"/".join(p) for p in paths})
    names = [
        n for n in names if not any(o.startswith(f"{n}/") for o in names)
    ]  # a name is a file or a folder
    return {name: draw(st.binary(max_size=64)) for name in names}


@given(folder_contents())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_publishing_into_a_folder_the_atlas_did_not_write_is_refused(make_target, tmp_path, contents):
    target = make_target()
    for rel, data in contents.items():
        target.put(rel, data)
    with pytest.raises(PublishError, match=f"no {MARKER} file.*Choose another"):
        publish_site(fake_site(tmp_path / "site", "new"), target.uri, keep=2)
    assert target.files() == contents  # byte-identical, nothing added


@given(folder_contents())
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_marked_folder_keeps_every_file_the_atlas_did_not_write(make_target, tmp_path, contents):
    """Marked by hand (`touch .neuron-atlas`): only the entry files are the atlas's to replace."""
    contents = {rel: data for rel, data in contents.items() if rel.split("/")[0] not in (ENTRY, POINTER)}
    contents.pop("versions", None)  # a file where the versions go: refused (test below)
    target = make_target()
    for rel, data in contents.items():
        target.put(rel, data)
    target.put(MARKER, b"")
    for night in range(3):
        index = fake_site(tmp_path / f"site{night}", f"night {night}")
        publish_site(index, target.uri, keep=2)
        current_is_intact(target, index)
    files = target.files()
    assert {rel: files.get(rel) for rel in contents} == contents
    assert (
        len(target.versions() - {rel.split("/")[1] for rel in contents if rel.startswith("versions/")}) == 2
    )


@pytest.mark.parametrize("name", [f"{ENTRY}/a", f"{POINTER}/a", "versions"])
def test_a_marked_folder_with_a_name_in_the_way_is_refused_untouched(tmp_path, name):
    www = tmp_path / "www"
    (www / name).parent.mkdir(parents=True, exist_ok=True)
    (www / name).write_text("mine")
    (www / MARKER).write_text("")
    before = {p: p.read_bytes() for p in www.rglob("*") if p.is_file()}
    with pytest.raises(PublishError, match="in the way"):
        publish_site(fake_site(tmp_path / "site", "new"), www, keep=2)
    assert before == {p: p.read_bytes() for p in www.rglob("*") if p.is_file()}


def test_the_cli_refuses_a_users_folder_in_one_line_before_building(tmp_path):
    store = write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    www = tmp_path / "www"
    (www / "versions" / "2019").mkdir(parents=True)
    (www / "versions" / "2019" / "index.html").write_text("my 2019 site")
    (www / "index.html").write_text("my site")
    result = CliRunner().invoke(main, ["site", str(store.root), "--publish", str(www), "--keep", "2"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: publish target"), (
        result.output
    )
    assert "Choose another" in lines[0] and not (store.root / "site").exists()  # checked before the build
    assert (www / "index.html").read_text() == "my site"
    assert (www / "versions" / "2019" / "index.html").read_text() == "my 2019 site"


@pytest.mark.parametrize("kind", ["store", "site", "file"])
def test_an_atlas_store_a_site_folder_or_a_file_is_no_publish_target(tmp_path, kind):
    target = tmp_path / "target"
    if kind == "store":
        claim_output(target, "synthetic")
        write_synthetic_store(target, [SyntheticLayer("l", 4)], SMALL)
    elif kind == "site":
        fake_site(target, "built")
    else:
        target.write_text("a file")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(PublishError, match="not a (publish target|folder)"):
        publish_site(fake_site(tmp_path / "new", "new"), target, keep=2)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p in before}
    assert not (target / "versions").exists() if target.is_dir() else True


def test_a_target_published_before_markers_is_adopted_and_its_old_versions_kept(tmp_path):
    """An earlier atlas wrote versions without records: adopted, never pruned (docs/STORE.md)."""
    www = tmp_path / "www"
    old = "20250101T000000.000000000Z-0123456789"
    (www / "versions" / old).mkdir(parents=True)
    (www / "versions" / old / "index.html").write_text("old")
    (www / POINTER).write_text(json.dumps({"version": old, "index": f"versions/{old}/index.html"}))
    (www / ENTRY).write_text("entry")
    for night in range(3):
        publish_site(fake_site(tmp_path / f"s{night}", str(night)), www, keep=2)
    assert (www / "versions" / old / "index.html").read_text() == "old"
    assert len(list((www / "versions").iterdir())) == 3


class Killed(BaseException):
    """The process dies here (as under SIGKILL: no cleanup runs)."""


@given(st.integers(min_value=0, max_value=8))  # 9 writes: record, 5 files, record, pointer, entry
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_publish_killed_mid_upload_never_costs_readers_their_version(make_target, tmp_path, killed_at):
    """Killed after `killed_at` writes; the next --keep 2 publishes keep what readers are on and
    remove the partial version, and only it."""
    target = make_target()
    sites = [fake_site(tmp_path / f"{uuid.uuid4().hex}", f"build {i}") for i in range(4)]
    publish_site(sites[0], target.uri, keep=2)
    first = current_is_intact(target, sites[0])
    writes = 0
    kind = type(open_location(target.uri))  # the target's scheme's class
    write_bytes = kind.write_bytes

    def dies(self, rel, data, headers=None):
        nonlocal writes
        if writes == killed_at:
            raise Killed
        writes += 1
        write_bytes(self, rel, data, headers)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        patch.setattr(kind, "write_bytes", dies)
        publish_site(sites[1], target.uri, keep=2)
    readers_on = readers_versions(target)  # the first version, the second, or both if cut between
    killed = target.versions() - {first}  # empty when killed before its first write
    records = [target.files().get(f"versions/{v}/{RECORD}") for v in killed]
    partial = not records or records[0] is None or not json.loads(records[0])["complete"]
    assert readers_on == {first} or not partial

    publish_site(sites[2], target.uri, keep=2)
    third = current_is_intact(target, sites[2])
    assert readers_on <= target.versions()  # readers' version survives the next publish
    assert not killed & target.versions() if partial else killed <= target.versions()
    publish_site(sites[3], target.uri, keep=2)
    fourth = current_is_intact(target, sites[3])
    assert target.versions() == {third, fourth} == target.folders()  # no empty folder left behind
    assert set(target.names()) == {MARKER, POINTER, ENTRY} | {
        f"versions/{v}/{rel}"
        for v, index in ((third, sites[2]), (fourth, sites[3]))
        for rel in [*site_files(index), RECORD]
    }


def test_a_killed_publish_process_then_keep_2_on_the_s3_server(s3, tmp_path):
    """A real `kill -9` mid-upload: the next `atlas site --publish --keep 2` runs keep what
    readers are on and remove the dead process's partial version."""
    store = write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    target = Target(f"s3://{s3.bucket}/killed-www", s3=s3, prefix="killed-www")

    def publish() -> str:
        result = CliRunner().invoke(main, ["site", str(store.root), "--publish", target.uri, "--keep", "2"])
        assert result.exit_code == 0, result.output
        return current_is_intact(target, store.root / "site" / "index.html")

    first = publish()
    script = f"""
import time
from atlas.site.publish import publish_site
from atlas.store.location import open_location
kind = type(open_location({target.uri!r}))  # the target's scheme's class
write_bytes = kind.write_bytes
def slow(self, *args, **kwargs):
    write_bytes(self, *args, **kwargs)
    time.sleep(0.3)
kind.write_bytes = slow
publish_site({str(store.root / "site" / "index.html")!r}, {target.uri!r}, keep=2)
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env_with_tests_on_path(), stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while (
            len(target.versions() - {first}) == 0
            or len(target.files()) < len(site_files(store.root / "site" / "index.html")) + 8
        ):
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read().decode()[-2000:]
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (partial,) = target.versions() - {first}
    assert not json.loads(target.files()[f"versions/{partial}/{RECORD}"])["complete"]
    assert readers_versions(target, store.root / "site" / "index.html") == {first}
    third = publish()
    assert target.versions() == {first, third}  # the partial version is gone, readers' version kept
    fourth = publish()
    assert target.versions() == {third, fourth} == target.folders()
