"""The store's manifest as an append-only journal: recording a unit costs O(1), not a rewrite.

Layout under `journal/` (all JSON lines, one unit record or `{"forget": key}` per line)::

    snapshot-<seq>.jsonl     every live record of the chunks numbered below <seq> (compaction)
    chunk-<seq>.jsonl        records committed later, one group (or one writer's run) per chunk

A reader lists the folder once, takes the newest snapshot and replays the chunks after it; a
later line for the same key wins. A line that is not a record (a write cut short, bytes that are
not UTF-8, JSON of another shape) is skipped like a torn line, and named with its file and line
in `skipped` (a torn last line, the normal trace of a killed writer, is skipped silently); its
unit is computed again, and the next writer's compaction drops it. Local folders append each record to the open chunk and flush
it to the OS at once (a killed process loses nothing committed; fsync per group bounds what a
power cut can lose). A bucket has no append, so records are buffered and each group becomes one
new chunk object, every `group_units` records or `group_seconds`, whichever comes first: a killed
driver loses at most that one group, whose units the rerun computes again.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from atlas.store.location import Location

FOLDER = "journal"
LEGACY_MANIFEST = "manifest.json"
_NAME = re.compile(r"^(snapshot|chunk)-(\d{10})\.jsonl$")
# Compact once the chunks hold this many lines and at least as many as the snapshot (amortized O(1)).
COMPACT_MIN_LINES = 20_000

T = TypeVar("T")


class Journal:
    """Reads and appends the records of one store; only the lease holder appends."""

    def __init__(self, location: Location, group_units: int = 64, group_seconds: float = 10.0):
        self.location = location
        self.group_units = group_units
        self.group_seconds = group_seconds
        self._seq = 0  # the chunk being written
        self._snapshot_lines = 0
        self._chunk_lines = 0  # lines in chunks after the newest snapshot
        self._buffer: list[str] = []  # bucket: records of the group not yet put
        self._handle = None  # local: the open chunk, in append mode
        self._unsynced = 0  # local: records not yet fsynced
        self._group_started = time.monotonic()
        self.skipped: list[str] = []  # "<file> line <n>: <why>" for each line that is not a record
        self.found = False  # the last load found a journal or a legacy manifest

    # -- reading ----------------------------------------------------------------------------
    def load(self, parse: Callable[[dict], T]) -> dict[str, T]:
        """Every committed record (key -> `parse(record)`), from snapshot + chunks, or a legacy
        manifest.json. `parse` raises ValueError or TypeError for a line that is not a record."""
        for attempt in range(3):
            try:
                return self._load(parse)
            except FileNotFoundError:  # a compaction removed a file between listing and reading
                if attempt == 2:
                    raise
        return {}

    def _load(self, parse: Callable[[dict], T]) -> dict[str, T]:
        files = sorted(
            (int(m.group(2)), m.group(1), rel)
            for rel in self.location.sizes(FOLDER)
            if (m := _NAME.match(rel.rpartition("/")[2]))
        )
        snapshots = [(seq, rel) for seq, kind, rel in files if kind == "snapshot"]
        records: dict[str, T] = {}
        self.skipped = []
        self.found = bool(files)
        start = 0
        if snapshots:
            start, rel = snapshots[-1]
            self._snapshot_lines = self._replay(rel, parse, records)
        elif not files and self.location.exists(LEGACY_MANIFEST):
            self.found = True
            for item in json.loads(self.location.read_bytes(LEGACY_MANIFEST))["units"]:
                records[item["key"]] = parse(item)
            self._snapshot_lines = len(records)
        self._chunk_lines = 0
        for seq, kind, rel in files:
            if kind == "chunk" and seq >= start:
                self._chunk_lines += self._replay(rel, parse, records)
        self._seq = (files[-1][0] + 1) if files else 0
        return records

    def _replay(self, rel: str, parse: Callable[[dict], T], records: dict[str, T]) -> int:
        """Apply one file's lines; count the records, note the lines that are not one."""
        data = self.location.read_bytes(rel)
        try:
            lines: list[str | bytes] = list(data.decode().split("\n"))
        except UnicodeDecodeError:  # damage: decode line by line, to keep every intact record
            lines = list(data.split(b"\n"))
        count = 0
        for number, raw in enumerate(lines, start=1):
            if not raw:
                continue
            why = _apply(raw, parse, records)
            torn = number == len(lines) and why == _NOT_JSON  # no newline yet: a write cut short
            if why is None:
                count += 1
            elif not torn:
                self.skipped.append(f"{self.location.url(rel)} line {number}: {why}")
        return count

    # -- writing ----------------------------------------------------------------------------
    def append(self, line: str) -> bool:
        """Record one line; True when this ended a group (the caller may then flush shards first)."""
        self._chunk_lines += 1
        if self.location.local:
            if self._handle is None:
                path = self.location.path(f"{FOLDER}/chunk-{self._seq:010d}.jsonl")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held across calls)
            self._handle.write(line + "\n")
            self._handle.flush()
            self._unsynced += 1
            waiting = self._unsynced
        else:
            self._buffer.append(line)
            waiting = len(self._buffer)
        if waiting == 1:
            self._group_started = time.monotonic()
        return waiting >= self.group_units or time.monotonic() - self._group_started >= self.group_seconds

    def flush(self) -> None:
        """End the group: fsync the local chunk, or put the buffered records as one chunk object."""
        if self.location.local:
            if self._handle is not None and self._unsynced:
                os.fsync(self._handle.fileno())
            self._unsynced = 0
            return
        if self._buffer:
            body = "".join(line + "\n" for line in self._buffer).encode()
            self.location.write_bytes(f"{FOLDER}/chunk-{self._seq:010d}.jsonl", body)
            self._seq += 1
            self._buffer = []

    def should_compact(self) -> bool:
        return self._chunk_lines >= max(COMPACT_MIN_LINES, self._snapshot_lines)

    def compact(self, lines: Iterable[str]) -> None:
        """Write every live record as a new snapshot, then drop the chunks it covers."""
        self.close()
        name = f"snapshot-{self._seq:010d}.jsonl"
        body = "".join(line + "\n" for line in lines).encode()
        self.location.write_bytes(f"{FOLDER}/{name}", body)
        self._snapshot_lines, self._chunk_lines = body.count(b"\n"), 0
        self.skipped = []
        for rel in self.location.sizes(FOLDER):
            match = _NAME.match(rel.rpartition("/")[2])
            if match and int(match.group(2)) <= self._seq and not rel.endswith(name):
                self.location.delete(rel)
        if self.location.exists(LEGACY_MANIFEST):
            self.location.delete(LEGACY_MANIFEST)  # now held by the snapshot

    def close(self) -> None:
        """Flush, and start the next chunk on the next append."""
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._seq += 1


_NOT_JSON = "not JSON"


def _apply(raw: str | bytes, parse: Callable[[dict], T], records: dict[str, T]) -> str | None:
    """Apply one journal line to `records`; None when it was a record, else why it is not one."""
    try:
        item = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        return "not UTF-8"
    except json.JSONDecodeError:
        return _NOT_JSON
    if isinstance(item, dict) and set(item) == {"forget"} and isinstance(item["forget"], str):
        records.pop(item["forget"], None)
        return None
    try:
        record = parse(item)
    except (ValueError, TypeError) as err:
        return str(err)
    records[item["key"]] = record
    return None
