"""The store's manifest as an append-only journal: recording a unit costs O(1), not a rewrite.

Layout under `journal/` (all JSON lines, one unit record or `{"forget": key}` per line)::

    snapshot-<seq>.jsonl     every live record of the chunks numbered below <seq> (compaction)
    chunk-<seq>.jsonl        records committed later, one group (or one writer's run) per chunk

A reader lists the folder once, takes the newest snapshot and replays the chunks after it; a
later line for the same key wins. Local folders append each record to the open chunk and flush
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
from collections.abc import Iterable

from atlas.storage import Location

FOLDER = "journal"
LEGACY_MANIFEST = "manifest.json"
_NAME = re.compile(r"^(snapshot|chunk)-(\d{10})\.jsonl$")
# Compact once the chunks hold this many lines and at least as many as the snapshot (amortized O(1)).
COMPACT_MIN_LINES = 20_000


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

    # -- reading ----------------------------------------------------------------------------
    def load(self) -> dict[str, dict]:
        """Every committed record (key -> record), from snapshot + chunks, or a legacy manifest.json."""
        for attempt in range(3):
            try:
                return self._load()
            except FileNotFoundError:  # a compaction removed a file between listing and reading
                if attempt == 2:
                    raise
        return {}

    def _load(self) -> dict[str, dict]:
        files = sorted(
            (int(m.group(2)), m.group(1), rel)
            for rel in self.location.sizes(FOLDER)
            if (m := _NAME.match(rel.rpartition("/")[2]))
        )
        snapshots = [(seq, rel) for seq, kind, rel in files if kind == "snapshot"]
        records: dict[str, dict] = {}
        start = 0
        if snapshots:
            start, rel = snapshots[-1]
            self._snapshot_lines = _replay(self.location.read_bytes(rel), records)
        elif not files and self.location.exists(LEGACY_MANIFEST):
            for item in json.loads(self.location.read_bytes(LEGACY_MANIFEST))["units"]:
                records[item["key"]] = item
            self._snapshot_lines = len(records)
        self._chunk_lines = 0
        for seq, kind, rel in files:
            if kind == "chunk" and seq >= start:
                self._chunk_lines += _replay(self.location.read_bytes(rel), records)
        self._seq = (files[-1][0] + 1) if files else 0
        return records

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


def _replay(data: bytes, records: dict[str, dict]) -> int:
    """Apply one file's lines; a torn last line (a write cut short) is not a record yet."""
    count = 0
    for raw in data.decode().split("\n"):
        if not raw:
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError:
            continue
        count += 1
        if "forget" in item:
            records.pop(item["forget"], None)
        else:
            records[item["key"]] = item
    return count
