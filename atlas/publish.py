"""Publishing a built site to a folder or bucket prefix, switched atomically.

Each build goes to its own prefix, `versions/<id>/`, with the right Content-Type on every
object. Only when all of it is up is the small entry page written: `index.html` at the target's
root (plus `current.json` saying the same for scripts), which sends the browser to the new
version. The site's pages link to each other relatively, so a reader who entered a version
stays in it: a poll during a switch sees the old version or the new one, never a mix. The
newest `keep` versions stay (at least two, so a reader mid-page keeps its files).
"""

from __future__ import annotations

import hashlib
import html
import json
import mimetypes
import os
import time
from pathlib import Path

from atlas.storage import Location, open_location

VERSIONS = "versions"
POINTER = "current.json"
ENTRY = "index.html"
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
    for path in files:
        rel = path.relative_to(site).as_posix()
        headers = {"Content-Type": content_type(rel), "Cache-Control": "public, max-age=86400, immutable"}
        location.write_bytes(f"{VERSIONS}/{version}/{rel}", path.read_bytes(), headers)
    switch(location, version)
    prune_versions(location, max(2, keep), current=version)
    return location.url(ENTRY)


def switch(location: Location, version: str) -> None:
    """Point readers at a version: the pointer, then the entry page, each one small write."""
    fresh = {"Cache-Control": "no-cache"}
    href = f"{VERSIONS}/{version}/index.html"
    pointer = json.dumps({"version": version, "index": href}).encode()
    location.write_bytes(POINTER, pointer, {**fresh, "Content-Type": "application/json"})
    page = _ENTRY_PAGE.format(href=html.escape(href), href_js=json.dumps(href))
    location.write_bytes(ENTRY, page.encode(), {**fresh, "Content-Type": _TYPES[".html"]})


def current_version(location: Location) -> str | None:
    try:
        return json.loads(location.read_bytes(POINTER))["version"]
    except FileNotFoundError:
        return None


def prune_versions(location: Location, keep: int, current: str) -> list[str]:
    """Delete all but the newest `keep` versions (never the current one); return those deleted."""
    files = location.sizes(VERSIONS)
    versions = sorted({rel.split("/")[1] for rel in files})
    doomed = [v for v in versions[:-keep] if v != current] if keep < len(versions) else []
    for rel in files if not location.local else [f"{VERSIONS}/{version}" for version in doomed]:
        if rel.split("/")[1] in doomed:
            location.delete(rel)  # a local version goes as one folder, a bucket's object by object
    return doomed


def site_of_store(out: Path | str) -> tuple[Path, str | None]:
    """Build the site of a store: its local index.html, and for a bucket store, where the
    site went online (published to `<out>/site`)."""
    from atlas.site import build_site

    index = build_site(out)
    location = open_location(out)
    return index, None if location.local else publish_site(index, location.url("site"))
