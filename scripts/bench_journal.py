"""How much the driver pays to record one finished unit, as the store grows (target: <= 2 ms at 100,000).

    python scripts/bench_journal.py                 # 1k, 10k and 100k units
    python scripts/bench_journal.py --units 1000 20000

Each unit's shard is staged first, as a worker would (not timed); the timed part is what the
driver does per unit: `Store.commit` (move the shard in place, append one journal record, and
every so often fsync a group or compact into a snapshot). It prints the mean over all units,
over the last tenth (where a manifest rewritten per unit was slowest), the worst unit, and the
time a fresh reader takes to open the store and list what is pending.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from atlas.store.store import Store, UnitRecord, table_to_parquet_bytes


def stage(store: Store, count: int) -> list:
    """Records for `count` units whose shards sit in staging (plain writes: setup, not timed)."""
    data = table_to_parquet_bytes(pa.table({"layer": ["mixed4a"], "image": [b"\0" * 2048]}))
    template = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "rows": 1}
    folder = Path(store.location.path("staging/render"))
    folder.mkdir(parents=True)
    records = []
    for i in range(count):
        key = f"render-{i:020d}"
        (folder / f"{key}.t.parquet").write_bytes(data)
        info = {
            **template,
            "path": f"shards/render/{key}.parquet",
            "staged": f"staging/render/{key}.t.parquet",
        }
        records.append(UnitRecord.done(key, "render", "mixed4a", {"render": info}, range(8 * i, 8 * i + 8)))
    return records


def measure(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        records = stage(store, count)
        times = []
        for record in records:
            start = time.perf_counter()
            store.commit(record)
            times.append(time.perf_counter() - start)
        store.release()
        start = time.perf_counter()
        reader = Store(tmp)
        left = reader.pending(r.key for r in records)
        reopen = time.perf_counter() - start
        journal = sum(p.stat().st_size for p in (Path(tmp) / "journal").iterdir())
    tenth = max(1, count // 10)
    print(
        f"{count:>7} units: commit {statistics.mean(times) * 1000:.3f} ms/unit mean, "
        f"{statistics.mean(times[-tenth:]) * 1000:.3f} ms last tenth, {max(times) * 1000:.0f} ms worst "
        f"(an fsync or a compaction); journal {journal / 1e6:.1f} MB; reopen + pending: {reopen:.2f} s ({len(left)} left)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    for count in parser.parse_args().units:
        measure(count)


if __name__ == "__main__":
    main()
