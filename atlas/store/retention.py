"""Which stored units a complete run keeps: a rule over past runs, not only the current plan.

Every complete run records the keys it planned (`runs/<time>.json`). With `keep_runs = N` in
the job's `[job]` table, units planned by any of the last N complete runs stay and the rest are
pruned: 1 (the default) keeps exactly the current plan, as before; a larger N keeps the history
of a series (e.g. one run per training checkpoint); 0 never prunes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from atlas.store.store import Store

RUNS = "runs"


def record_run(store: Store, keys: Iterable[str]) -> str:
    """Remember what a complete run planned; returns the record's path in the store."""
    rel = f"{RUNS}/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{time.time_ns() % 10**9:09d}.json"
    store.location.write_bytes(rel, json.dumps({"keys": sorted(keys)}).encode())
    return rel


def kept_keys(store: Store, keep_runs: int) -> set[str] | None:
    """Keys planned by the last `keep_runs` recorded runs; None when nothing is to be pruned."""
    if keep_runs <= 0:
        return None
    runs = sorted(store.location.sizes(RUNS))[-keep_runs:]
    return {key for rel in runs for key in json.loads(store.location.read_bytes(rel))["keys"]}


def apply_retention(store: Store, planned: Iterable[str], keep_runs: int) -> int:
    """Record this run, prune what the rule no longer keeps, forget run records past the window."""
    record_run(store, planned)
    keep = kept_keys(store, keep_runs)
    for old in sorted(store.location.sizes(RUNS))[: -max(keep_runs, 1)]:
        store.location.delete(old)
    return 0 if keep is None else store.prune(keep)
