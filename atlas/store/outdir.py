"""Where a job may write: the rules for output folders, checked before any work starts.

1. A job name is letters, digits, '.', '_' and '-', and not '.' or '..'; the folder derived from
   it, `atlas-out/<name>`, must resolve (links followed) to a strict descendant of `atlas-out/`.
2. An output folder that already exists must be empty or carry the marker file `MARKER`, which
   the atlas writes into every folder it creates (the store and its `site/`). A marker names the
   job that owns the store: another job is refused, so it cannot prune the first job's shards.
3. A new folder whose name differs only by case from a folder next to it is refused: on the case
   insensitive file systems of macOS and Windows both would be the same folder.

Together with `atlas.store.safefs.remove` this is how the atlas never deletes or replaces anything it
did not write itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from atlas.core.errors import AtlasError

MARKER = ".neuron-atlas"
DEFAULT_BASE = Path("atlas-out")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class OutputFolderError(AtlasError):
    """An output folder the atlas may not write into; the message states the rule and the fix."""


def check_job_name(name: object) -> str:
    """The name itself when it can name a folder below `atlas-out/`; else OutputFolderError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise OutputFolderError(
            f"job name {name!r} is not allowed: a job name is letters, digits, '.', '_' or '-' (not "
            f"'.' or '..'), because the default output folder {DEFAULT_BASE}/<name> must stay inside "
            f"{DEFAULT_BASE}/; choose a plain name such as 'demo'"
        )
    return name


def derived_out(name: str, base: Path = DEFAULT_BASE) -> Path:
    """`base/name`, checked to resolve (links followed) strictly below `base`."""
    folder = base / check_job_name(name)
    resolved, root = folder.resolve(), base.resolve()
    if root not in resolved.parents:
        raise OutputFolderError(
            f"the output folder {folder} of job {name!r} resolves to {resolved}, which is not inside "
            f"{root}: a folder derived from the job name must be a strict descendant of {base}/ "
            f"(is {folder} a symbolic link?); remove the link, rename the job or set [job] out"
        )
    return folder


def check_output(out: Path, job: str) -> Path:
    """Check the rules for `out` without writing anything: call it before any work.

    Returns `out` with `..` folded away (`a/../..` is `..`): the path to write through, which
    the system could not otherwise open while `a` does not exist.
    """
    out = Path(os.path.normpath(out))
    if out.is_symlink() and not out.exists():
        raise OutputFolderError(f"output folder {out} is a symbolic link to nothing; fix or remove the link")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output folder {out} exists and is not a folder; choose another --out")
    if not out.is_dir():
        _refuse_case_twin(out)
        return out
    owner = marker_job(out)
    if owner is None:
        owner = legacy_job(out)  # written before markers existed: adopted, and marked on claim
    if owner is None and any(out.iterdir()):
        raise OutputFolderError(
            f"output folder {out} is not empty and has no {MARKER} file: the atlas writes only "
            f"into a new or empty folder or one it made itself (marked by {MARKER}), so it never "
            f"mixes with or replaces your files. Choose another folder (--out or [job] out); if "
            f"{out} is an atlas output folder from before the marker existed, mark it with "
            f"`touch {out / MARKER}`"
        )
    if owner and owner != job:
        raise OutputFolderError(
            f"output folder {out} belongs to job {owner!r} (see {out / MARKER}), not {job!r}: one "
            f"folder holds one job's store, or each run would prune the other's results. Choose "
            f"another folder, or set [job] name back to {owner!r}"
        )
    return out


def claim_output(out: Path, job: str) -> Path:
    """`check_output`, then create the folder if needed and mark it as the job's."""
    out = check_output(out, job)
    out.mkdir(parents=True, exist_ok=True)
    if not marker_job(out):
        write_marker(out, job=job)
    return out


def check_site_folder(site_dir: Path) -> None:
    """A site folder may be replaced only if it is missing, empty or marked as the atlas's own."""
    if site_dir.is_symlink():
        raise OutputFolderError(
            f"site folder {site_dir} is a symbolic link: a rebuild replaces the site folder, which "
            f"would replace your link. Remove the link and point it the other way (from where the "
            f"site is served to {site_dir})"
        )
    if site_dir.exists() and not site_dir.is_dir():
        raise OutputFolderError(
            f"{site_dir} exists and is not a folder; remove it or choose another site folder"
        )
    if (
        site_dir.is_dir()
        and marker_job(site_dir) is None
        and not is_legacy_site(site_dir)
        and any(site_dir.iterdir())
    ):
        raise OutputFolderError(
            f"site folder {site_dir} is not empty and has no {MARKER} file: a rebuild replaces only a "
            f"site the atlas built itself, never your files. Move {site_dir} away, or if an earlier "
            f"version of the atlas built it, mark it with `touch {site_dir / MARKER}`"
        )


def marker_bytes(**info: str) -> bytes:
    """What a marker file holds: who wrote the folder, and e.g. the job or the kind of folder."""
    return (json.dumps({"writer": "neuron-atlas", **info}) + "\n").encode()


def marker_info(data: bytes) -> dict:
    """What a marker records; {} for one that records nothing readable (e.g. made by `touch`)."""
    try:
        recorded = json.loads(data.decode("utf-8"))
    except ValueError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


def write_marker(folder: Path, **info: str) -> None:
    """Mark `folder` as written by the atlas (the file is tiny, so a plain write is enough)."""
    (folder / MARKER).write_bytes(marker_bytes(**info))


def marker_job(folder: Path) -> str | None:
    """None without a marker; else the job it names ('' when it names none, e.g. `touch`)."""
    path = folder / MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        job = marker_info(path.read_bytes()).get("job")
    except OSError:
        return ""
    return job if isinstance(job, str) else ""


def legacy_job(folder: Path) -> str | None:
    """The job of an output folder an atlas wrote before markers existed; None for anything else.

    Such a folder holds the atlas's own `job.json` (a job name and a model digest) beside its
    `manifest.json` (a list of units): no folder of a user's looks like that by chance, so nightly
    rebuilds of older stores keep working without a manual `touch`.
    """
    info, manifest = _json_file(folder / "job.json"), _json_file(folder / "manifest.json")
    if not isinstance(info, dict) or not isinstance(manifest, dict) or "units" not in manifest:
        return None
    name = info.get("name")
    return name if isinstance(name, str) and "model_digest" in info else None


def is_legacy_site(site_dir: Path) -> bool:
    """A site an atlas built before markers existed: it has the builder's `build.json` summary."""
    summary = _json_file(site_dir / "build.json")
    return isinstance(summary, dict) and "model_digest" in summary and "layers" in summary


def _json_file(path: Path) -> object:
    if not path.is_file() or path.is_symlink():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _refuse_case_twin(out: Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name != out.name and entry.name.casefold() == out.name.casefold():
            raise OutputFolderError(
                f"output folder {out} differs from the existing {entry} only by case: on the file "
                f"systems of macOS and Windows they are the same folder, and two jobs would share one "
                f"store. Choose a name that differs by more than case"
            )
