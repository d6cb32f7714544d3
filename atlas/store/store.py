"""The atlas store: one Parquet shard per finished unit plus a journal of unit records.

Layout under the output folder or bucket prefix (any `atlas.store.location` location)::

    job.json                      what the job was (model, digest, layers, spec)
    journal/                      unit records: snapshot + appended chunks (atlas.store.journal)
    shards/<kind>/<unit_key>.parquet
    shards/<kind>/.<key>.<token>.staged     written, not yet committed (no `*.parquet` glob sees it)
    lease.json                    the driver that holds the store (atlas.store.lease)

Shards are staged under a dot name (by a worker when it can reach the store, else by the
driver), then the driver commits: renames them to their final name and journals one record.
Readers see only committed units. A rerun trusts each shard's recorded size; `verify` reads
every shard and checks its sha256, and any read checks the checksum of what it read.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from atlas.core.errors import AtlasError
from atlas.core.provenance import table_provenance
from atlas.store.journal import LEGACY_MANIFEST, Journal
from atlas.store.lease import Lease
from atlas.store.location import Location, open_location, parse_out

MANIFEST = LEGACY_MANIFEST
JOB = "job.json"
SHARDS = "shards"


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
        """The record of a finished unit, from the shard records `write_shards` returned."""
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    """What S3 reports as a single-part object's ETag: lets a rerun check content by listing."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def parquet_bytes_to_table(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """Parse a shard's bytes here, in the calling thread.

    `pq.read_table` scans through Arrow's thread pools, whose tasks can drop the last reference
    to `data` (a Python object) after the read returned; at interpreter exit such a release
    takes the GIL from a native thread, and CPython ends that thread inside a `noexcept`
    destructor: `terminate called without an active exception`, exit 134 (a no-op rerun on a
    busy machine; `scripts/rerun_exit.py`). A single-threaded read leaves nothing behind.
    """
    return pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)


def _record(item: object) -> UnitRecord:
    """A journal line as a unit record; ValueError when it is not one (the journal skips it).

    Checked: what readers index by (key, kind, layer, status, channels, each table's path and
    sha256); the other fields are only shown."""
    if not isinstance(item, dict) or not all(type(item.get(k)) is str for k in ("key", "kind", "layer")):
        raise ValueError("not a unit record (one needs the strings key, kind and layer)")
    channels, tables = item.get("channels", []), item.get("tables", {})
    if (
        item.get("status", "done") not in ("done", "failed")
        or type(channels) is not list
        or not all(type(c) is int for c in channels)
        or type(tables) is not dict
        or not all(
            type(t) is dict and type(t.get("path")) is type(t.get("sha256")) is str for t in tables.values()
        )
    ):
        raise ValueError(
            f"not a unit record (unit {item['key']}: a status, channels or tables of the wrong kind)"
        )
    fields_ = {k: v for k, v in item.items() if k in _RECORD_FIELDS}  # old stores: "extra"
    fields_["channels"] = tuple(channels)
    return UnitRecord(**fields_)


def _dumps(entry: UnitRecord) -> str:
    return json.dumps(vars(entry), separators=(",", ":"))  # asdict's deep copy costs 10x more


def write_shards(location: Location, key: str, tables: dict[str, pa.Table]) -> dict[str, dict]:
    """Stage a unit's tables (dot names, invisible to readers); return {table_kind: {path, staged,
    sha256, md5, size, rows, provenance}}."""
    token = uuid.uuid4().hex[:12]
    written = {}
    for table_kind, table in tables.items():
        data = table_to_parquet_bytes(table)
        staged = f"{SHARDS}/{table_kind}/.{key}.{token}.staged"
        location.write_bytes(staged, data)
        written[table_kind] = {
            "path": f"{SHARDS}/{table_kind}/{key}.parquet",
            "staged": staged,
            "sha256": _sha256(data),
            "md5": _md5(data),
            "size": len(data),
            "rows": table.num_rows,
        }
        if (info := table_provenance(table)) is not None:  # the unit's record names it too
            written[table_kind]["provenance"] = info
    return written


class Store:
    """Reads and writes one atlas store (a local folder or a bucket prefix)."""

    def __init__(self, root: Path | str, group_units: int = 64, group_seconds: float = 10.0):
        self.location = open_location(root)
        self.root = Path(self.location.root) if self.location.local else None
        self.uri = self.location.uri
        self.journal = Journal(self.location, group_units, group_seconds)
        self._entries: dict[str, UnitRecord] = self._load()
        self._lines: dict[str, str] = {}  # key -> the record's JSON, for compaction
        self._staged: list[UnitRecord] = []  # bucket: records whose shards move at the next flush
        self._lease: Lease | None = None

    # -- the driver's lease -----------------------------------------------------------------
    def acquire(self) -> None:
        """Become the store's only writer: take the lease, drop uncommitted shards, compact."""
        lease = Lease(self.location)
        lease.acquire()
        self._lease = lease
        self._entries = self._load()
        self.cleanup()
        if self.journal.should_compact() or self.location.exists(MANIFEST) or self.journal.skipped:
            self._compact()  # a snapshot of the live records: lines that were no record are dropped

    def _load(self) -> dict[str, UnitRecord]:
        try:
            return self.journal.load(_record)
        except (ValueError, KeyError, TypeError) as err:  # only a legacy manifest.json fails whole
            raise StoreError(
                f"{self.location.url(MANIFEST)} is not a valid manifest ({err}); delete it to rebuild from scratch"
            ) from err

    def exists(self) -> bool:
        """Whether an atlas store is here: a job.json, a journal or a legacy manifest."""
        return self.journal.found or self.location.exists(JOB)

    def require(self) -> None:
        """StoreError unless an atlas store is here (commands that only read one)."""
        if not self.exists():
            raise StoreError(
                f"{self.uri} is not an atlas store (it has no {JOB} and no journal): give the `out` of a "
                "job that ran (a timeline's store is its timeline/ folder)"
            )

    def release(self) -> None:
        """Commit what is buffered and hand the store back."""
        try:
            self.flush()
            self.journal.close()
        finally:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    def cleanup(self) -> int:
        """Delete staged shards and shards no committed record names (a killed driver's leftovers)."""
        named = {info["path"] for e in self._entries.values() for info in e.tables.values()}
        stray = [rel for rel in self.location.sizes(SHARDS) if rel not in named]
        for rel in stray:
            self.location.delete(rel)
        if self.root is not None:  # a killed local write's temp file beside job.json
            for path in self.root.glob(".*.tmp"):
                path.unlink(missing_ok=True)
                stray.append(path.name)
        return len(stray)

    sweep_temporary = cleanup

    def _compact(self) -> None:
        self.flush()
        self.journal.compact(self._line(entry) for entry in self._entries.values())

    def _line(self, entry: UnitRecord) -> str:
        line = self._lines.get(entry.key)
        if line is None:
            line = self._lines[entry.key] = _dumps(entry)
        return line

    def entries(self) -> list[UnitRecord]:
        return list(self._entries.values())

    def entry(self, key: str) -> UnitRecord | None:
        return self._entries.get(key)

    # -- state of units ---------------------------------------------------------------------
    def pending(self, keys: Iterable[str], force: bool = False, verify: bool = False) -> list[str]:
        """Keys not finished, or whose shards are missing, of another size or (S3) another ETag.

        One listing of shards/ answers for every key: no shard is downloaded, except one whose
        ETag is not the recorded MD5 (multipart uploads and SSE-KMS have other ETags), which is
        read and checked by its sha256. `verify` also reads every shard and checks its checksum
        (what `verify(keys)` does).
        """
        keys = list(keys)
        if force:
            return keys
        listing = self.location.etags(SHARDS)
        todo = {key for key in keys if not self._intact(key, listing)}
        if verify:
            todo |= set(self.verify(key for key in keys if key not in todo))
        return [key for key in keys if key in todo]

    def _intact(self, key: str, listing: dict[str, tuple[int, str]]) -> bool:
        entry = self._entries.get(key)
        if entry is None or entry.status != "done":
            return False
        for info in entry.tables.values():
            size, etag = listing.get(info["path"], (None, ""))
            if size is None or ("size" in info and size != info["size"]):
                return False
            trusted = "size" in info and (not etag or "md5" not in info or etag == info["md5"])
            if not trusted and not self._checksum_ok(info):  # before sizes, or an ETag that differs
                return False
        return True

    def _checksum_ok(self, info: dict) -> bool:
        try:
            return _sha256(self.location.read_bytes(info["path"])) == info["sha256"]
        except FileNotFoundError:
            return False

    def has(self, key: str, verify: bool = True) -> bool:
        """True when the unit finished and its shards are intact (every checksum read when verify)."""
        return not self.pending([key], verify=verify)

    def verify(self, keys: Iterable[str] | None = None, workers: int = 8) -> list[str]:
        """Done units (all, or `keys`) with a shard missing or whose bytes fail their sha256."""
        chosen = None if keys is None else set(keys)
        wanted = [
            e for e in self._entries.values() if e.status == "done" and (chosen is None or e.key in chosen)
        ]
        with ThreadPoolExecutor(workers) as pool:
            intact = pool.map(lambda e: all(self._checksum_ok(i) for i in e.tables.values()), wanted)
            return [entry.key for entry, ok in zip(wanted, intact, strict=True) if not ok]

    def is_failed(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.status == "failed"

    # -- writing ----------------------------------------------------------------------------
    def write_shards(self, key: str, tables: dict[str, pa.Table]) -> dict[str, dict]:
        """Write a unit's shards to staging; the records say where and what (see `commit`)."""
        return write_shards(self.location, key, tables)

    def commit(self, record: UnitRecord) -> None:
        """Make a unit visible: move its staged shards in place and journal its record.

        Locally both happen now. In a bucket the moves (server-side copies) and the journal put
        happen for a whole group at once (`flush`), every `group_units` units or `group_seconds`.
        """
        if self._lease is not None:
            self._lease.check()
        if self.location.local:
            self._move_staged([record])
        else:
            self._staged.append(record)
        committed = _committed(record)
        self._entries[record.key] = committed
        self._lines.pop(record.key, None)
        if self.journal.append(self._line(committed)):
            self.flush()
        if self.journal.should_compact():
            self._compact()

    def flush(self) -> None:
        """End the commit group: staged shards moved in place, then the journal written."""
        if self._staged:
            self._move_staged(self._staged)
            self._staged = []
        self.journal.flush()

    def _move_staged(self, records: list[UnitRecord]) -> None:
        moves = [
            (info["staged"], info["path"]) for r in records for info in r.tables.values() if "staged" in info
        ]
        if len(moves) <= 1:
            for src, dst in moves:
                self.location.move(src, dst)
            return
        with ThreadPoolExecutor(min(16, len(moves))) as pool:
            list(pool.map(lambda move: self.location.move(*move), moves))

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
        """Write a finished unit's shard and commit it."""
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
        """Write every table a unit produced (one shard per table kind), then commit the unit."""
        shards = self.write_shards(unit_key, tables)
        self.commit(UnitRecord.done(unit_key, kind, layer, shards, channels, attempts, seconds))
        return self._entries[unit_key]

    def forget(self, keys: Iterable[str]) -> None:
        """Drop units from the journal, e.g. to recompute them; their shards go at the next cleanup."""
        for key in keys:
            if self._entries.pop(key, None) is not None:
                self._lines.pop(key, None)
                self.journal.append(json.dumps({"forget": key}))
        self.flush()

    def prune(self, keep: Iterable[str]) -> int:
        """Delete shards and records of units not in `keep` (see atlas.store.retention for which)."""
        keep = set(keep)
        stale = [e for e in self._entries.values() if e.key not in keep]
        self.forget(e.key for e in stale)
        for entry in stale:
            for info in entry.tables.values():
                self.location.delete(info["path"])
        return len(stale)

    def write_job(self, info: dict) -> None:
        self.location.write_bytes(JOB, json.dumps(info, indent=1, default=str).encode())

    def job(self) -> dict:
        try:
            return json.loads(self.location.read_bytes(JOB))
        except FileNotFoundError:
            return {}

    # -- reading ----------------------------------------------------------------------------
    def layers(self, kind: str) -> list[str]:
        """Layers that have finished shards of this kind, in the order they were first written."""
        seen: dict[str, None] = {}
        for entry in self._entries.values():
            if entry.status == "done" and kind in entry.tables:
                seen.setdefault(entry.layer, None)
        return list(seen)

    def read_unit(self, key: str, kind: str, columns: list[str] | None = None) -> pa.Table:
        """The table of one kind that a finished unit wrote (its checksum checked)."""
        entry = self._entries.get(key)
        if entry is None or entry.status != "done" or kind not in entry.tables:
            raise StoreError(f"{self.uri}: unit {key} has no finished {kind!r} table; rerun the job")
        info = entry.tables[kind]
        try:
            data = self.location.read_bytes(info["path"])
        except FileNotFoundError:
            data = b""
        if _sha256(data) != info["sha256"]:
            raise StoreError(
                f"{self.location.url(info['path'])} is missing or damaged (checksum mismatch): run "
                f"`atlas verify {self.uri}` and rerun the job to recompute it"
            )
        return parquet_bytes_to_table(data, columns)

    def read_layer(self, kind: str, layer: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """One finished unit's table of a layer at a time: memory bounded by a unit, not the layer."""
        for entry in list(self._entries.values()):
            if entry.status == "done" and kind in entry.tables and entry.layer == layer:
                yield self.read_unit(entry.key, kind, columns)

    def read(self, kind: str, layer: str | None = None, columns: list[str] | None = None) -> pa.Table | None:
        """All finished shards of a kind (optionally one layer) as one table; None when there are none."""
        tables = [
            self.read_unit(entry.key, kind, columns)
            for entry in list(self._entries.values())
            if entry.status == "done" and kind in entry.tables and (layer is None or entry.layer == layer)
        ]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")

    def dataset(self, kind: str) -> ds.Dataset:
        """The committed shards of a kind as one pyarrow dataset (for DuckDB, pandas, Polars).

        Exactly the committed units: no staged, stale or half-committed shard is in it.
        """
        paths = [
            self.location.path(e.tables[kind]["path"])
            for e in self._entries.values()
            if e.status == "done" and kind in e.tables
        ]
        return ds.dataset(paths, filesystem=self.location.fs, format="parquet")


def _committed(record: UnitRecord) -> UnitRecord:
    """The record as the journal keeps it: without the staging paths."""
    if not any("staged" in info for info in record.tables.values()):
        return record
    tables = {k: {f: v for f, v in info.items() if f != "staged"} for k, info in record.tables.items()}
    return replace(record, tables=tables)


def open_store(uri_or_path: Path | str) -> Store:
    """The store at a local folder or a URI (s3://, gs://, file://)."""
    return Store(parse_out(uri_or_path) if isinstance(uri_or_path, str) else uri_or_path)


class StoreError(AtlasError, RuntimeError):
    """The output folder cannot be used as it is; the message says how to fix it."""
