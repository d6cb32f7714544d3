"""The atlas store: one Parquet shard per finished unit plus a manifest, written atomically.

Layout under the output folder::

    job.json                      what the job was (model, digest, layers, spec)
    manifest.json                 every unit: key, kind, layer, rows, sha256, status
    shards/<kind>/<unit_key>.parquet

The driver is the only writer. Every file is written to a temporary name and renamed, so a
reader (or a rerun after a crash) never sees half a shard, and a shard that is missing, of the
wrong size or (when verified) of the wrong checksum is treated as missing and recomputed.

The interface the job runner and the site use (docs/STORE.md, "The store interface"): `pending`,
`verify`, `write_shards` + `commit` + `flush`, `entries`/`entry`, `read_unit`, `read_layer`,
`layers`, `write_job`/`job`, `prune`; `open_store` picks the store for a path or URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from atlas.errors import AtlasError
from atlas.safefs import file_mode, remove

MANIFEST = "manifest.json"
JOB = "job.json"


@dataclass(frozen=True)
class UnitRecord:
    """One unit as the store records it: finished ("done", with its shards) or "failed"."""

    key: str
    kind: str
    layer: str
    channels: tuple[int, ...] = ()
    status: str = "done"  # "done" or "failed"
    rows: int = 0
    sha256: str = ""
    path: str = ""  # relative to the store root: the shard of the unit's own kind
    reason: str = ""
    tables: dict = field(default_factory=dict)  # kind -> {"path", "sha256", "size", "rows"}, every shard
    attempts: int = 1
    seconds: float = 0.0

    @classmethod
    def done(
        cls,
        key: str,
        kind: str,
        layer: str,
        tables: dict[str, dict],
        channels: Sequence[int] = (),
        attempts: int = 1,
        seconds: float = 0.0,
    ) -> UnitRecord:
        """The record of a finished unit, from the shard records `Store.write_shards` returned."""
        main = tables.get(kind) or next(iter(tables.values()))
        return cls(
            key=key,
            kind=kind,
            layer=layer,
            channels=tuple(int(c) for c in channels),
            rows=main["rows"],
            sha256=main["sha256"],
            path=main["path"],
            tables=tables,
            attempts=attempts,
            seconds=round(seconds, 3),
        )

    @classmethod
    def failed(
        cls, key: str, kind: str, layer: str, reason: str, channels: Sequence[int] = (), attempts: int = 1
    ) -> UnitRecord:
        channels = tuple(int(c) for c in channels)
        return cls(key, kind, layer, channels, status="failed", reason=reason, attempts=attempts)


_RECORD_FIELDS = {f.name for f in fields(UnitRecord)}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())  # mkstemp makes 0600; the rename would keep it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp, within=path.parent)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def open_store(uri_or_path: str | Path) -> Store:
    """The store at a path or URI; only local folders (plain paths, file://) so far."""
    text = str(uri_or_path)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Store(unquote(parsed.path))
    if len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise StoreError(f"{text}: {parsed.scheme}:// stores are not supported yet; give a local folder")
    return Store(text)


class Store:
    """Reads and writes one atlas output folder.

    Writers call `write_shards` then `commit`; readers see only committed units. Locally every
    commit rewrites the manifest at once, so `flush` has nothing left to do.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.uri = self.root.resolve().as_uri()
        self._entries: dict[str, UnitRecord] = self._load_manifest()
        self._lines: dict[str, str] = {}  # key -> the entry's JSON, cached between rewrites

    # -- manifest ---------------------------------------------------------------------------
    def _load_manifest(self) -> dict[str, UnitRecord]:
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
            known = {name: value for name, value in item.items() if name in _RECORD_FIELDS}  # old: "extra"
            entries[item["key"]] = UnitRecord(**known)
        return entries

    def _save_manifest(self) -> None:
        # One line per unit, each serialized once: rewriting after every unit stays cheap at
        # thousands of units (the whole file is still replaced atomically).
        for key, entry in self._entries.items():
            if key not in self._lines:
                self._lines[key] = json.dumps(asdict(entry), separators=(",", ":"))
        body = ",\n".join(self._lines[key] for key in self._entries)
        atomic_write_bytes(self.root / MANIFEST, f'{{"version": 1, "units": [\n{body}\n]}}\n'.encode())

    def _set(self, entry: UnitRecord) -> None:
        self._entries[entry.key] = entry
        self._lines.pop(entry.key, None)

    def sweep_temporary(self) -> int:
        """Delete temp files a killed driver left mid-write (no reader ever uses them)."""
        stray = list((self.root / "shards").glob("*/.*.tmp")) + list(self.root.glob(".*.tmp"))
        for path in stray:
            remove(path, within=self.root)
        return len(stray)

    def entries(self) -> list[UnitRecord]:
        """Every recorded unit, done or failed."""
        return list(self._entries.values())

    def entry(self, key: str) -> UnitRecord | None:
        return self._entries.get(key)

    # -- state of units ---------------------------------------------------------------------
    def pending(self, keys: Iterable[str], force: bool = False, verify: bool = False) -> list[str]:
        """The keys still to compute: not finished, or with a shard missing or of the wrong size.

        `verify` also reads every shard and checks its checksum (what `verify(keys)` does).
        """
        keys = list(keys)
        if force:
            return keys
        todo = {key for key in keys if not self._intact(key)}
        if verify:
            todo |= set(self.verify(key for key in keys if key not in todo))
        return [key for key in keys if key in todo]

    def verify(self, keys: Iterable[str]) -> list[str]:
        """The finished units among `keys` whose shards no longer match their checksums."""
        damaged = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry.status != "done":
                continue
            for info in entry.tables.values():
                path = self.root / info["path"]
                if not path.is_file() or _sha256(path.read_bytes()) != info["sha256"]:
                    damaged.append(key)
                    break
        return damaged

    def _intact(self, key: str) -> bool:
        """Finished, and every shard is there at its recorded size (stores before sizes: present)."""
        entry = self._entries.get(key)
        if entry is None or entry.status != "done":
            return False
        for info in entry.tables.values():
            path = self.root / info["path"]
            if not path.is_file() or path.stat().st_size != info.get("size", path.stat().st_size):
                return False
        return True

    def has(self, key: str, verify: bool = True) -> bool:
        """True when the unit finished and all its shards are intact (checksums checked when verify)."""
        return not self.pending([key], verify=verify)

    def is_failed(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.status == "failed"

    # -- writing ----------------------------------------------------------------------------
    def write_shards(self, key: str, tables: dict[str, pa.Table]) -> dict[str, dict]:
        """Write a unit's tables atomically, one shard per table kind; readers see them after `commit`.

        Returns {table_kind: {"path", "sha256", "size", "rows"}} for `UnitRecord.done`.
        """
        written = {}
        for table_kind, table in tables.items():
            data = table_to_parquet_bytes(table)
            rel = f"shards/{table_kind}/{key}.parquet"
            atomic_write_bytes(self.root / rel, data)
            written[table_kind] = {
                "path": rel,
                "sha256": _sha256(data),
                "size": len(data),
                "rows": table.num_rows,
            }
        return written

    def commit(self, record: UnitRecord) -> None:
        """Record a finished or failed unit; it is in the manifest on disk when this returns."""
        self._set(record)
        self._save_manifest()

    def flush(self) -> None:
        """End of a commit group: locally each commit is already on disk, so nothing is left to write."""

    def write_unit(
        self,
        unit_key: str,
        kind: str,
        layer: str,
        table: pa.Table,
        channels: Sequence[int] = (),
        attempts: int = 1,
        seconds: float = 0.0,
    ) -> UnitRecord:
        """Write and commit a finished unit that produced one table of its own kind."""
        return self.write_unit_tables(unit_key, kind, layer, {kind: table}, channels, attempts, seconds)

    def write_unit_tables(
        self,
        unit_key: str,
        kind: str,
        layer: str,
        tables: dict[str, pa.Table],
        channels: Sequence[int] = (),
        attempts: int = 1,
        seconds: float = 0.0,
    ) -> UnitRecord:
        """Write and commit a finished unit's tables (one shard per table kind)."""
        shards = self.write_shards(unit_key, tables)
        record = UnitRecord.done(unit_key, kind, layer, shards, channels, attempts, seconds)
        self.commit(record)
        return record

    def prune(self, keep: Iterable[str]) -> int:
        """Delete shards and manifest entries of units not in `keep` (stale after a spec change)."""
        keep = set(keep)
        stale = [e for e in self._entries.values() if e.key not in keep]
        for entry in stale:
            for info in entry.tables.values():
                remove(self.root / info["path"], within=self.root)
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

    def read_unit(self, key: str, table_kind: str, columns: list[str] | None = None) -> pa.Table:
        """The table of one kind that a finished unit wrote."""
        entry = self._entries.get(key)
        if entry is None or entry.status != "done" or table_kind not in entry.tables:
            raise StoreError(f"{self.root}: unit {key} has no finished {table_kind!r} table; rerun the job")
        return pq.read_table(self.root / entry.tables[table_kind]["path"], columns=columns)

    def read_layer(self, table_kind: str, layer: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """One finished unit's table of a layer at a time: memory bounded by a unit, not the layer."""
        return self._tables(table_kind, layer, columns)

    def read(self, kind: str, layer: str | None = None, columns: list[str] | None = None) -> pa.Table | None:
        """All finished shards of a kind (optionally one layer) as one table; None when there are none."""
        tables = list(self._tables(kind, layer, columns))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")

    def _tables(self, kind: str, layer: str | None, columns: list[str] | None) -> Iterator[pa.Table]:
        for entry in list(self._entries.values()):
            if entry.status == "done" and kind in entry.tables and (layer is None or entry.layer == layer):
                yield pq.read_table(self.root / entry.tables[kind]["path"], columns=columns)


class StoreError(AtlasError, RuntimeError):
    """The output folder cannot be used as it is; the message says how to fix it."""
