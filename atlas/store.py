"""The atlas store: one Parquet shard per finished unit plus a manifest, written atomically.

Layout under the output folder::

    job.json                      what the job was (model, digest, layers, spec)
    manifest.json                 every unit: key, kind, layer, rows, sha256, status
    shards/<kind>/<unit_key>.parquet

The driver is the only writer. Every file is written to a temporary name and renamed, so a
reader (or a rerun after a crash) never sees half a shard, and a shard whose checksum does not
match the manifest is treated as missing and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atlas.errors import AtlasError

MANIFEST = "manifest.json"
JOB = "job.json"


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    kind: str
    layer: str
    channels: tuple[int, ...] = ()
    status: str = "done"  # "done" or "failed"
    rows: int = 0
    sha256: str = ""
    path: str = ""  # relative to the store root: the shard of the unit's own kind
    reason: str = ""
    tables: dict = field(default_factory=dict)  # kind -> {"path", "sha256", "rows"}, for every shard
    attempts: int = 1
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


class Store:
    """Reads and writes one atlas output folder."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._entries: dict[str, ManifestEntry] = self._load_manifest()
        self._lines: dict[str, str] = {}  # key -> the entry's JSON, cached between rewrites

    # -- manifest ---------------------------------------------------------------------------
    def _load_manifest(self) -> dict[str, ManifestEntry]:
        path = self.root / MANIFEST
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StoreError(f"{path} is not valid JSON ({err}); delete it to rebuild from scratch") from err
        entries = {}
        for item in raw.get("units", []):
            item["channels"] = tuple(item.get("channels", ()))
            entries[item["key"]] = ManifestEntry(**item)
        return entries

    def _save_manifest(self) -> None:
        # One line per unit, each serialized once: rewriting after every unit stays cheap at
        # thousands of units (the whole file is still replaced atomically).
        for key, entry in self._entries.items():
            if key not in self._lines:
                self._lines[key] = json.dumps(asdict(entry), separators=(",", ":"))
        body = ",\n".join(self._lines[key] for key in self._entries)
        atomic_write_bytes(self.root / MANIFEST, f'{{"version": 1, "units": [\n{body}\n]}}\n'.encode())

    def _set(self, entry: ManifestEntry) -> None:
        self._entries[entry.key] = entry
        self._lines.pop(entry.key, None)

    def sweep_temporary(self) -> int:
        """Delete temp files a killed driver left mid-write (no reader ever uses them)."""
        stray = list((self.root / "shards").glob("*/.*.tmp")) + list(self.root.glob(".*.tmp"))
        for path in stray:
            path.unlink(missing_ok=True)
        return len(stray)

    def entries(self) -> list[ManifestEntry]:
        return list(self._entries.values())

    def entry(self, key: str) -> ManifestEntry | None:
        return self._entries.get(key)

    # -- state of units ---------------------------------------------------------------------
    def has(self, key: str, verify: bool = True) -> bool:
        """True when the unit finished and all its shards are intact (checksums checked when verify)."""
        entry = self._entries.get(key)
        if entry is None or entry.status != "done":
            return False
        for info in entry.tables.values():
            path = self.root / info["path"]
            if not path.is_file() or (verify and _sha256(path.read_bytes()) != info["sha256"]):
                return False
        return True

    def is_failed(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.status == "failed"

    # -- writing ----------------------------------------------------------------------------
    def write_unit(
        self,
        unit_key: str,
        kind: str,
        layer: str,
        table: pa.Table,
        channels: Sequence[int] = (),
        attempts: int = 1,
        seconds: float = 0.0,
        extra: dict | None = None,
    ) -> ManifestEntry:
        """Write a finished unit's shard atomically, then record it in the manifest."""
        return self.write_unit_tables(
            unit_key, kind, layer, {kind: table}, channels, attempts, seconds, extra
        )

    def write_unit_tables(
        self,
        unit_key: str,
        kind: str,
        layer: str,
        tables: dict[str, pa.Table],
        channels: Sequence[int] = (),
        attempts: int = 1,
        seconds: float = 0.0,
        extra: dict | None = None,
    ) -> ManifestEntry:
        """Write every table a unit produced (one shard per table kind), then record the unit."""
        written = {}
        for table_kind, table in tables.items():
            data = table_to_parquet_bytes(table)
            rel = f"shards/{table_kind}/{unit_key}.parquet"
            atomic_write_bytes(self.root / rel, data)
            written[table_kind] = {"path": rel, "sha256": _sha256(data), "rows": table.num_rows}
        main = written.get(kind) or next(iter(written.values()))
        entry = ManifestEntry(
            key=unit_key,
            kind=kind,
            layer=layer,
            channels=tuple(int(c) for c in channels),
            rows=main["rows"],
            sha256=main["sha256"],
            path=main["path"],
            attempts=attempts,
            seconds=round(seconds, 3),
            extra=extra or {},
            tables=written,
        )
        self._set(entry)
        self._save_manifest()
        return entry

    def record_failure(
        self,
        unit_key: str,
        kind: str,
        layer: str,
        reason: str,
        channels: Sequence[int] = (),
        attempts: int = 1,
    ) -> None:
        self._set(
            ManifestEntry(
                key=unit_key,
                kind=kind,
                layer=layer,
                channels=tuple(int(c) for c in channels),
                status="failed",
                reason=reason,
                attempts=attempts,
            )
        )
        self._save_manifest()

    def forget(self, keys: Iterable[str]) -> None:
        """Drop units from the manifest, e.g. to recompute them; their shards stay until `prune`."""
        for key in keys:
            self._entries.pop(key, None)
            self._lines.pop(key, None)
        self._save_manifest()

    def prune(self, keep: Iterable[str]) -> int:
        """Delete shards and manifest entries of units not in `keep` (stale after a spec change)."""
        keep = set(keep)
        stale = [e for e in self._entries.values() if e.key not in keep]
        for entry in stale:
            for info in entry.tables.values():
                (self.root / info["path"]).unlink(missing_ok=True)
            del self._entries[entry.key]
            self._lines.pop(entry.key, None)
        if stale:
            self._save_manifest()
        return len(stale)

    def write_job(self, info: dict) -> None:
        atomic_write_bytes(self.root / JOB, json.dumps(info, indent=1, default=str).encode())

    def job(self) -> dict:
        path = self.root / JOB
        return json.loads(path.read_text()) if path.exists() else {}

    # -- reading ----------------------------------------------------------------------------
    def layers(self, kind: str) -> list[str]:
        """Layers that have finished shards of this kind, in the order they were first written."""
        seen: dict[str, None] = {}
        for entry in self._entries.values():
            if entry.status == "done" and kind in entry.tables:
                seen.setdefault(entry.layer, None)
        return list(seen)

    def read_unit(self, key: str, kind: str) -> pa.Table:
        """The table of one kind that a finished unit wrote."""
        entry = self._entries.get(key)
        if entry is None or entry.status != "done" or kind not in entry.tables:
            raise StoreError(f"{self.root}: unit {key} has no finished {kind!r} table; rerun the job")
        return pq.read_table(self.root / entry.tables[kind]["path"])

    def read(self, kind: str, layer: str | None = None, columns: list[str] | None = None) -> pa.Table | None:
        """All finished shards of a kind (optionally one layer) as one table; None when there are none."""
        tables = [
            pq.read_table(self.root / entry.tables[kind]["path"], columns=columns)
            for entry in self._entries.values()
            if entry.status == "done" and kind in entry.tables and (layer is None or entry.layer == layer)
        ]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")


class StoreError(AtlasError, RuntimeError):
    """The output folder cannot be used as it is; the message says how to fix it."""
