"""One driver per store: a lease object created exclusively, renewed while the driver lives.

The lease is `lease.json` at the store's root, created with create-exclusive (a local
`O_EXCL` open, an S3 conditional put). It names its holder and an expiry that a background
thread pushes forward every third of the time to live. A second driver finds it and stops with
a message naming the holder; an expired lease, or one whose holder was a process on this
machine that no longer runs (a killed driver), is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from atlas.core.errors import AtlasError
from atlas.store.location import Location

LEASE = "lease.json"
DEFAULT_TTL_S = 120.0


class LeaseError(AtlasError):
    """Another driver holds the store."""


class Lease:
    """Held from `acquire()` to `release()`; `lost` turns True if another driver took it over."""

    def __init__(self, location: Location, ttl: float = DEFAULT_TTL_S):
        self.location = location
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "renewed": now,
                "expires": now + self.ttl,
            }
        ).encode()

    def acquire(self) -> None:
        for _ in range(3):
            if self.location.create_exclusive(LEASE, self._body()):
                self._thread = threading.Thread(target=self._renew_loop, name="atlas-lease", daemon=True)
                self._thread.start()
                return
            holder = self._read()
            if holder is None or _stale(holder):
                self.location.delete(LEASE)
                continue
            left = holder["expires"] - time.time()
            raise LeaseError(
                f"{self.location.uri} is in use by another atlas driver (pid {holder.get('pid')} on "
                f"{holder.get('host')}; its lease runs {left:.0f} s more unless renewed). Wait for it to "
                f"finish or stop it; if it died on another machine, rerun after {left:.0f} s or delete "
                f"{self.location.url(LEASE)}"
            )
        raise LeaseError(f"could not take the lease on {self.location.uri}: it keeps changing hands; retry")

    def _read(self) -> dict | None:
        try:
            return json.loads(self.location.read_bytes(LEASE))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            holder = self._read()
            if holder is None or holder.get("token") != self.token:
                self.lost = True
                return
            self.location.write_bytes(LEASE, self._body())

    def check(self) -> None:
        """Raise if another driver took the store over (this one was stalled past the expiry)."""
        if self.lost:
            raise LeaseError(
                f"this driver lost its lease on {self.location.uri} (stalled longer than {self.ttl:g} s and "
                "another driver took over); stop it: the other driver carries on"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self.location.delete(LEASE)


def _stale(holder: dict) -> bool:
    """Expired, or held by a process of this machine that is gone."""
    if holder.get("expires", 0) < time.time():
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
