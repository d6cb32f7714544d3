"""scripts/nightly.sh runs one night at a time per store: a held lock skips the run (exit 75)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

from raytools import REPO, write_spec

NIGHTLY = REPO / "scripts" / "nightly.sh"


def _run(spec: Path, out: Path, runtime: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    cmd = ["bash", str(NIGHTLY), "--out", str(out), str(spec)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_a_held_lock_skips_the_run_and_another_store_of_the_job_is_not_blocked(tmp_path: Path) -> None:
    held_out, runtime = tmp_path / "held", tmp_path / "run"
    spec = write_spec(tmp_path / "job.toml", held_out)
    runtime.mkdir()
    users = tmp_path / "users-folder"  # another store of the job; refused at once, which is quick
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    store_id = hashlib.sha256(str(held_out).encode()).hexdigest()[:12]
    with open(runtime / f"atlas-nightly-faults-{store_id}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a slow night still running on this store
        skipped = _run(spec, held_out, runtime)
        assert skipped.returncode == 75, skipped.stderr
        assert "another run of faults holds" in skipped.stderr
        assert not held_out.exists()  # skipped before any work
        other = _run(spec, users, runtime)
    assert other.returncode not in (0, 75), other.stderr  # its own lock taken, then the folder refused
    assert "not empty and has no" in other.stderr
    assert (users / "notes.txt").read_text() == "mine"
