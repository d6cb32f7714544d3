"""A GCS emulator for tests: gcp-storage-emulator (pure Python) on 127.0.0.1, in memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs


@contextmanager
def gcs_server(bucket: str = "atlas") -> Iterator[pafs.GcsFileSystem]:
    """Start the emulator with `bucket`, point the atlas at it (STORAGE_EMULATOR_HOST); yields a
    file system on it for the test's own checks."""
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=bucket)
    server.start()
    host, port = server._api._httpd.server_address  # port 0: the one the system picked
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://{host}:{port}"
    try:
        yield pafs.GcsFileSystem(anonymous=True, endpoint_override=f"{host}:{port}", scheme="http")
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        server.stop()
