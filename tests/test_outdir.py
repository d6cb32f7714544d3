"""Nothing lost, nothing unreadable: output-folder rules, safe deletion, file modes, atomic site swaps."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store

import atlas.run.job
from atlas.cli import main
from atlas.core.errors import AtlasError
from atlas.plan.spec import SpecError, parse_spec
from atlas.run.job import run_job
from atlas.site import build_site
from atlas.store import safefs
from atlas.store.outdir import MARKER, OutputFolderError, check_site_folder, claim_output, marker_job
from atlas.store.safefs import UnsafeDeletionError, remove, swap_folder
from atlas.store.store import Store

SPEC = """
[job]
{job}
[model]
name = "tiny-cnn"
[[layers]]
name = "conv2"
"""
SMALL = SyntheticOptions(image_size=16, crop_size=12, examples_k=2, diversity=2, bins=8, channels_per_unit=4)


def _spec(job: str) -> object:
    return parse_spec(SPEC.format(job=job), source="<outdir test>")


USER_FILES = {"notes.txt": b"my notes", "site/index.html": b"my own site"}


def _user_files(folder: Path) -> Path:
    """Put files a user keeps into `folder`, to check afterwards that nothing touched them."""
    for name, data in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _unchanged(folder: Path) -> bool:
    """The user's files are there as they were, and nothing was added beside them."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return found == set(USER_FILES) and all((folder / n).read_bytes() == d for n, d in USER_FILES.items())


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the user's own files, and a model load that must not happen."""
    cwd = _user_files(tmp_path / "work")
    monkeypatch.chdir(cwd)

    def no_work(spec: object) -> None:
        raise AssertionError("the output folder must be refused before the model loads")

    monkeypatch.setattr(atlas.run.job, "prepare", no_work)
    return cwd


@pytest.mark.parametrize("name", ["..", ".", "a/../..", "/tmp/elsewhere", "../work"])
def test_job_names_that_leave_atlas_out_are_refused_with_the_rule(work: Path, name: str) -> None:
    with pytest.raises(SpecError, match=r"atlas-out/<name> must stay inside atlas-out/"):
        _spec(f'name = "{name}"')
    assert _unchanged(work)


def test_the_reported_case_writes_nothing_and_deletes_nothing(work: Path) -> None:
    """`name = ".."` once wrote into the working directory and replaced its site/ folder."""
    (work / "job.toml").write_text(SPEC.format(job='name = ".."'))
    result = CliRunner().invoke(main, ["run", "job.toml"])
    assert result.exit_code != 0 and "must stay inside atlas-out/" in result.output
    assert (work / "site/index.html").read_bytes() == b"my own site"
    assert not (work / "job.json").exists() and not (work / "atlas-out").exists()


def test_a_derived_folder_that_is_a_link_out_of_atlas_out_is_refused(work: Path, tmp_path: Path) -> None:
    elsewhere = _user_files(tmp_path / "elsewhere")
    (work / "atlas-out").mkdir()
    (work / "atlas-out/linked").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(SpecError, match="strict descendant of atlas-out/"):
        _spec('name = "linked"')
    assert _unchanged(elsewhere)


@pytest.mark.parametrize("out", [".", "a/../..", "{abs}"])
def test_an_existing_folder_the_atlas_did_not_write_is_refused_before_any_work(work: Path, out: str) -> None:
    spec = _spec(f'name = "job"\nout = "{out.format(abs=work)}"')
    with pytest.raises(OutputFolderError, match=f"has no {MARKER} file"):
        run_job(spec)
    assert _unchanged(work) and not (work.parent / "a").exists()


def test_an_explicit_link_is_followed_and_its_target_checked(work: Path, tmp_path: Path) -> None:
    full, empty = _user_files(tmp_path / "full"), tmp_path / "empty"
    empty.mkdir()
    (work / "to-full").symlink_to(full, target_is_directory=True)
    (work / "to-empty").symlink_to(empty, target_is_directory=True)
    with pytest.raises(OutputFolderError, match="not empty"):
        claim_output(Path("to-full"), "job")
    assert _unchanged(full)
    claim_output(Path("to-empty"), "job")
    assert marker_job(empty) == "job" and (work / "to-empty").is_symlink()
    (work / "dangling").symlink_to(tmp_path / "nothing")
    with pytest.raises(OutputFolderError, match="link to nothing"):
        claim_output(Path("dangling"), "job")
    assert not (tmp_path / "nothing").exists()


def test_a_new_folder_and_a_marked_one_are_accepted_another_jobs_is_not(work: Path) -> None:
    out = claim_output(Path("atlas-out/demo"), "demo")
    assert json.loads((out / MARKER).read_text())["job"] == "demo"
    (out / "manifest.json").write_text("{}")
    claim_output(out, "demo")  # its own folder: fine, again and again
    with pytest.raises(OutputFolderError, match="belongs to job 'demo'"):
        claim_output(out, "other")
    old = work / "old-store"  # a store from before the marker, marked by hand as the error says
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    (old / MARKER).touch()
    claim_output(old, "adopted")
    assert marker_job(old) == "adopted"


def test_a_store_written_before_markers_existed_is_adopted_a_look_alike_is_not(work: Path) -> None:
    old = work / "atlas-out" / "nightly"
    (old / "shards").mkdir(parents=True)
    (old / "job.json").write_text(json.dumps({"name": "nightly", "model_digest": "abc", "layers": []}))
    (old / "manifest.json").write_text(json.dumps({"version": 1, "units": []}))
    (old / "site").mkdir()
    (old / "site" / "build.json").write_text(json.dumps({"version": 1, "model_digest": "abc", "layers": {}}))
    with pytest.raises(OutputFolderError, match="belongs to job 'nightly'"):
        claim_output(old, "other")  # adopted as the job it names, not as any job
    claim_output(old, "nightly")
    assert marker_job(old) == "nightly"
    check_site_folder(old / "site")  # the old builder's site may be replaced by the next build
    lookalike = work / "photos"  # a job.json without the atlas's fields is a user's file
    lookalike.mkdir()
    (lookalike / "job.json").write_text(json.dumps({"name": "photos"}))
    (lookalike / "manifest.json").write_text(json.dumps({"units": []}))
    with pytest.raises(OutputFolderError, match="not empty and has no"):
        claim_output(lookalike, "photos")
    (lookalike / "site").mkdir()
    (lookalike / "site" / "build.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="not empty and has no"):
        check_site_folder(lookalike / "site")


def test_names_that_differ_only_by_case_are_refused(work: Path) -> None:
    claim_output(_spec('name = "demo"').out, "demo")
    spec = _spec('name = "Demo"')
    with pytest.raises(OutputFolderError, match="only by case"):
        run_job(spec)
    assert sorted(p.name for p in (work / "atlas-out").iterdir()) == ["demo"]


def test_output_folder_errors_are_atlas_errors() -> None:
    assert issubclass(OutputFolderError, AtlasError) and issubclass(UnsafeDeletionError, AtlasError)


# -- deletion ----------------------------------------------------------------------------------


def test_remove_stays_inside_its_root_and_never_follows_links(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", _user_files(tmp_path / "outside")
    (root / "sub").mkdir(parents=True)
    (root / "sub/link-to-outside").symlink_to(outside, target_is_directory=True)
    (root / "shards").symlink_to(outside, target_is_directory=True)
    for path in (outside / "notes.txt", root / "../outside/notes.txt", root, root / "shards/notes.txt"):
        with pytest.raises(UnsafeDeletionError):
            remove(path, within=root)
    remove(root / "shards", within=root)  # the link itself goes, not what it points to
    remove(root / "sub", within=root)  # a folder goes; the link inside it is unlinked, not followed
    assert not (root / "shards").is_symlink() and not (root / "sub").exists()
    assert _unchanged(outside)
    remove(root / "never-there", within=root)


def test_prune_refuses_a_manifest_path_that_leaves_the_store(tmp_path: Path) -> None:
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(b"precious")
    write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    (chunk,) = (tmp_path / "out/journal").glob("chunk-*.jsonl")
    records = [json.loads(line) for line in chunk.read_text().splitlines()]
    records[0]["tables"]["render"]["path"] = "../victim.parquet"
    chunk.write_text("".join(json.dumps(record) + "\n" for record in records))
    with pytest.raises(UnsafeDeletionError, match="not inside"):
        Store(tmp_path / "out").prune(keep=[])
    assert victim.read_bytes() == b"precious"


# -- the site folder ---------------------------------------------------------------------------


def test_a_site_folder_the_atlas_did_not_build_is_never_replaced(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    (tmp_path / "out/site").mkdir()
    (tmp_path / "out/site/index.html").write_text("my own page")
    with pytest.raises(OutputFolderError, match=f"site folder .* has no {MARKER}"):
        build_site(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out/site").iterdir()] == ["index.html"]
    assert (tmp_path / "out/site/index.html").read_text() == "my own page"


def test_a_linked_site_folder_is_refused(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    served = tmp_path / "served"
    served.mkdir()
    (tmp_path / "out/site").symlink_to(served, target_is_directory=True)
    with pytest.raises(OutputFolderError, match="symbolic link"):
        build_site(tmp_path / "out")
    assert (tmp_path / "out/site").is_symlink() and list(served.iterdir()) == []


def test_the_previous_site_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_synthetic_store(tmp_path / "out", [SyntheticLayer("l", 4)], SMALL)
    first = build_site(tmp_path / "out").parent
    assert marker_job(first) == ""  # marked as the atlas's own, for the next rebuild
    build_site(tmp_path / "out")
    monkeypatch.setattr(safefs, "_exchange", lambda first, second: False)  # systems without renameat2
    build_site(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "job.json",
        "journal",
        "shards",
        "site",
    ]


def test_swap_folder_exchanges_or_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for exchange in (True, False):
        if not exchange:
            monkeypatch.setattr(safefs, "_exchange", lambda first, second: False)
        new, current = tmp_path / f"new-{exchange}", tmp_path / f"current-{exchange}"
        new.mkdir()
        current.mkdir()
        (new / "v").write_text("new")
        (current / "v").write_text("old")
        retired = swap_folder(new, current)
        assert (current / "v").read_text() == "new" and (retired / "v").read_text() == "old"


KILLER = """
import os, signal, sys
from pathlib import Path
import atlas.site.build as build

real, seen = build._build_layer, []

def dying(*args, **kwargs):
    seen.append(1)
    if len(seen) == 2:  # the second layer: half the new site is written
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

build._build_layer = dying
build.build_site(Path(sys.argv[1]))
"""


def _site_is_complete(site: Path) -> bool:
    """Every page links only to files that exist, and every layer of the store has its page."""
    pages = list(site.glob("*.html"))
    for page in pages:
        for ref in re.findall(r'(?:src|href)="([^"#]+)', page.read_text()):
            if ":" not in ref and not (site / ref).exists():
                return False
    return {"index.html", "a.html", "b.html", "c.html"} <= {p.name for p in pages}


def test_a_killed_rebuild_leaves_the_previous_site_complete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    layers = [SyntheticLayer(name, 4) for name in ("a", "b", "c")]
    write_synthetic_store(out, layers, SMALL)
    site = build_site(out).parent
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    write_synthetic_store(out, layers, replace(SMALL, seed=7))
    killed = subprocess.run([sys.executable, "-c", KILLER, str(out)], env={**os.environ}, timeout=120)
    assert killed.returncode == -9
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert _site_is_complete(site)
    assert any(p.name.startswith(".site.building-") for p in out.iterdir())  # what the kill left
    build_site(out)  # the next build clears it away and switches in a complete site
    assert _site_is_complete(site) and not any(p.name.startswith(".site") for p in out.iterdir())


# -- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    saved = os.umask(umask)
    try:
        out = claim_output(tmp_path / "out", "modes")
        write_synthetic_store(out, [SyntheticLayer("l", 4)], SMALL)
        build_site(out)
        build_site(out)  # a rebuild, with sprites linked from the previous site
    finally:
        os.umask(saved)
    paths = [out, *out.rglob("*")]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()}
    folders = {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()}
    assert modes == {0o666 & ~umask} and folders == {0o777 & ~umask}
    assert {"job.json", "journal", "site"} <= {p.name for p in out.iterdir()}
