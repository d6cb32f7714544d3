"""Publishing a built site to a folder or bucket prefix, switched atomically.

Each build goes to its own prefix, `versions/<id>/`, with the right Content-Type on every
object. Only when all of it is up is the small entry page written: `index.html` at the target's
root (plus `current.json` saying the same for scripts), which sends the browser to the new
version. The site's pages link to each other relatively, so a reader who entered a version
stays in it: a poll during a switch sees the old version or the new one, never a mix.

The output-folder rules hold for a target as for a store (`atlas.store.outdir`): the atlas publishes
only into an empty folder or prefix, or one carrying its marker (`.neuron-atlas`), and deletes
only what it wrote. Each version's record (`versions/<id>/.publish.json`) lists the version's
files: written first (incomplete), rewritten last (complete). Pruning keeps the newest `keep`
complete versions (at least two, so a reader mid-page keeps its files) and the current one,
removes the files of older complete versions and of partial ones a newer complete version
superseded (a killed publish), the record last, and never touches a version without a record.
"""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
import os
import re
import time
from pathlib import Path

from atlas.core.errors import AtlasError
from atlas.store.location import Location, open_location
from atlas.store.outdir import MARKER, marker_bytes, marker_info

VERSIONS = "versions"
POINTER = "current.json"
ENTRY = "index.html"
RECORD = ".publish.json"  # in each version: its files, and whether all of them are up
KIND = "publish"  # the kind a publish target's marker records
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".png": "image/png",
}
_ENTRY_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>neuron atlas</title>
<meta http-equiv="refresh" content="0; url={href}">
<script>location.replace({href_js} + location.hash)</script>
<p><a href="{href}">Open the atlas</a></p>
"""


def content_type(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class PublishError(AtlasError):
    """A publish target the atlas may not write into; the message states the rule and the fix."""


def publish_site(index: Path, target: Path | str, keep: int = 3) -> str:
    """Upload the site folder of `index` as a new version under `target`; return the entry page's URI."""
    site = Path(index).parent
    files = sorted(p for p in site.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(site).as_posix().encode())
        digest.update(path.read_bytes())
    now = time.time_ns()  # names sort in publishing order: pruning keeps the newest
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9))
    version = f"{stamp}.{now % 10**9:09d}Z-{digest.hexdigest()[:10]}"
    location = open_location(target)
    claim_target(location)
    names = [path.relative_to(site).as_posix() for path in files]
    write_record(location, version, names, complete=False)  # first: the files are the atlas's
    for path, rel in zip(files, names, strict=True):
        headers = {"Content-Type": content_type(rel), "Cache-Control": "public, max-age=86400, immutable"}
        location.write_bytes(f"{VERSIONS}/{version}/{rel}", path.read_bytes(), headers)
    write_record(location, version, names, complete=True)  # last: the version is whole
    previous = served_versions(location)
    switch(location, version)
    prune_versions(location, max(2, keep), keep_also={version, *previous})
    return location.url(ENTRY)


def check_target(location: Location) -> bool:
    """The output-folder rules for a publish target, checked before anything is built or written:
    True when the atlas published there before (its marker says so), False when it may start."""
    where = location.root if location.local else location.uri
    root = Path(location.root)
    if location.local and (root.is_symlink() or root.exists()) and not root.is_dir():
        raise PublishError(f"publish target {where} exists and is not a folder; choose another --publish")
    marked = False
    if location.exists(MARKER):
        info = marker_info(location.read_bytes(MARKER))
        if info.get("job") or info.get("kind") not in (None, KIND):
            owner = f"the store of job {info['job']!r}" if info.get("job") else f"a {info.get('kind')} folder"
            raise PublishError(
                f"publish target {where} is {owner} of the atlas (see its {MARKER}), not a publish "
                f"target: publishing there would mix with it. Publish to a folder or prefix of its own"
            )
        marked = info.get("kind") == KIND
    elif not location.empty() and not _legacy_target(location):
        raise PublishError(
            f"publish target {where} is not empty and has no {MARKER} file: publishing writes "
            f"{ENTRY}, {POINTER} and {VERSIONS}/ there and prunes old versions, so the atlas publishes "
            f"only into a new or empty folder or prefix, or one it published to (marked by {MARKER}). "
            f"Choose another, e.g. {where}/atlas; if an earlier atlas published to {where}, "
            f"create an empty {MARKER} file in it (only versions the atlas records are ever pruned)"
        )
    for name, folder in ((VERSIONS, True), (ENTRY, False), (POINTER, False)):
        path = root / name
        if location.local and (path.is_symlink() or path.exists()) and path.is_dir() != folder:
            raise PublishError(
                f"{path} is in the way: publishing writes {'a folder' if folder else 'a file'} there; "
                f"move it, or choose another --publish"
            )
    return marked


def claim_target(location: Location) -> None:
    """`check_target`, then mark the target as one the atlas publishes to."""
    if not check_target(location):
        location.write_bytes(MARKER, marker_bytes(kind=KIND))


def _legacy_target(location: Location) -> bool:
    """A target an atlas published to before markers existed: its pointer names its own entry page."""
    pointer = _json_file(location, POINTER)
    version = pointer.get("version") if isinstance(pointer, dict) else None
    return isinstance(version, str) and pointer.get("index") == f"{VERSIONS}/{version}/{ENTRY}"


def _json_file(location: Location, rel: str) -> object:
    """A small JSON file's value; None where there is no such file or it is not JSON."""
    if not location.exists(rel):
        return None
    try:
        return json.loads(location.read_bytes(rel))
    except (FileNotFoundError, ValueError):
        return None


def write_record(location: Location, version: str, files: list[str], complete: bool) -> None:
    """A version's record: the files the atlas writes into it, and whether they are all up."""
    record = json.dumps({"writer": "neuron-atlas", "complete": complete, "files": files}).encode()
    location.write_bytes(f"{VERSIONS}/{version}/{RECORD}", record, {"Content-Type": _TYPES[".json"]})


def switch(location: Location, version: str) -> None:
    """Point readers at a version: the pointer, then the entry page, each one small write."""
    fresh = {"Cache-Control": "no-cache"}
    href = f"{VERSIONS}/{version}/index.html"
    pointer = json.dumps({"version": version, "index": href}).encode()
    location.write_bytes(POINTER, pointer, {**fresh, "Content-Type": "application/json"})
    page = _ENTRY_PAGE.format(href=html.escape(href), href_js=json.dumps(href))
    location.write_bytes(ENTRY, page.encode(), {**fresh, "Content-Type": _TYPES[".html"]})


def served_versions(location: Location) -> set[str]:
    """The versions readers are sent to: by current.json and by the entry page (two, only when
    a publish was cut between writing the one and the other)."""
    pointer = _json_file(location, POINTER)
    served = {pointer.get("version")} if isinstance(pointer, dict) else set()
    if location.exists(ENTRY):
        served.update(
            re.findall(
                r'url=versions/([^/"]+)/index\.html"', location.read_bytes(ENTRY).decode(errors="replace")
            )
        )
    return {version for version in served if isinstance(version, str)}


def prune_versions(location: Location, keep: int, keep_also: set[str]) -> list[str]:
    """Delete the files the atlas recorded for all but the newest `keep` complete versions, and
    for partial versions older than the newest complete one; never a version in `keep_also` (those
    readers are on) nor one without a record. Returns the versions whose files were deleted."""
    listed = location.sizes(VERSIONS)
    records = {}
    for rel in listed:
        parts = rel.split("/")
        if len(parts) == 3 and parts[2] == RECORD:
            record = _read_record(location, rel)
            if record is not None:
                records[parts[1]] = record
    complete = sorted(v for v, (done, _) in records.items() if done)
    newest = complete[-1] if complete else ""
    partial = [v for v, (done, _) in records.items() if not done and v < newest]
    doomed = sorted(set(complete[:-keep] + partial) - keep_also)
    for version in doomed:
        folder = f"{VERSIONS}/{version}"
        for rel in records[version][1]:
            if f"{folder}/{rel}" in listed:  # a name in the record that lists nothing real is skipped
                location.delete(f"{folder}/{rel}")
        location.delete(f"{folder}/{RECORD}")  # last: a prune cut short is finished by the next
        location.delete_empty_folder(folder)
    return doomed


def _read_record(location: Location, rel: str) -> tuple[bool, list[str]] | None:
    """(complete, files) of a version's record; None for one the atlas cannot read as its own."""
    record = _json_file(location, rel)
    if not isinstance(record, dict) or record.get("writer") != "neuron-atlas":
        return None
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
        return None
    return record.get("complete") is True, files


def site_of_store(out: Path | str) -> tuple[Path, str | None]:
    """Build the site of a store: its local index.html, and for a bucket store, where the
    site went online (published to `<out>/site`)."""
    from atlas.site import build_site

    index = build_site(out)
    location = open_location(out)
    return index, None if location.local else publish_site(index, location.url("site"))
