"""Ray Jobs end to end: a head from `ray start --head` with token auth, `ray job submit`,
scripts/submit.sh and scripts/nightly.sh against it.

The head gets its own temp dir, ports and token, so it never touches other Ray clusters on the
machine; teardown kills exactly the processes that name its temp dir (no `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest
from raytools import REPO, manifest_units, write_spec

pytestmark = pytest.mark.slow

SUBMIT = REPO / "scripts" / "submit.sh"
NIGHTLY = REPO / "scripts" / "nightly.sh"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def kill_processes_naming(marker: str) -> None:
    """Kill the processes whose command line contains `marker`, and their children."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in arg for arg in proc.info["cmdline"] or []):
            found.add(proc)
            found.update(proc.children(recursive=True))
    for proc in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(found), timeout=15)


@pytest.fixture(scope="module")
def head():
    """A Ray head with token authentication on: (dashboard URL, environment holding the token)."""
    root = Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # short: Ray's socket paths are long
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, client, agent = free_ports(4)
    start = [
        "ray", "start", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        "--num-cpus=2", f"--temp-dir={root}", "--disable-usage-stats",
    ]  # fmt: skip
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
        yield f"http://127.0.0.1:{dashboard}", env, root
    finally:
        kill_processes_naming(str(root))
        shutil.rmtree(root, ignore_errors=True)


def run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def submitted(head, tmp_path_factory):
    """The issue's command, verbatim but for the spec: ray job submit --working-dir . -- atlas run."""
    address, env, _ = head
    root = tmp_path_factory.mktemp("submit")
    spec = write_spec(root / "tiny.toml", root / "out", channels="0:3")
    result = run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
                  "atlas", "run", str(spec), "--no-site"], env)  # fmt: skip
    return spec, root / "out", result


def test_ray_job_submit_runs_the_job_on_the_head(submitted):
    _, out, result = submitted
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "built faults: 3 units done" in result.stdout + result.stderr
    units = manifest_units(out)
    assert len(units) == 3 and {u["status"] for u in units} == {"done"}
    assert all((out / u["path"]).is_file() for u in units)


def test_a_wrong_token_is_refused(head):
    address, env, _ = head
    result = run(
        ["ray", "job", "list", "--address", address], env | {"RAY_AUTH_TOKEN": "0" * 64}, timeout=120
    )
    assert result.returncode != 0
    assert "token" in (result.stdout + result.stderr).lower()


def test_nightly_on_the_cluster_reruns_nothing_and_builds_the_site(head, submitted):
    """nightly.sh --address goes through submit.sh --then-site: one Ray job, run then site."""
    address, env, _ = head
    spec, out, _ = submitted
    result = run([str(NIGHTLY), "--address", address, str(spec)], env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "0 units done, 3 already done" in log
    assert re.search(r"submit.sh: atlas-faults-\d{8}-\d{6} -> ", log)  # the submission id it chose
    assert (out / "site" / "index.html").is_file()


def test_submit_script_rejects_a_missing_spec(head, tmp_path):
    address, env, _ = head
    result = run([str(SUBMIT), "--address", address, str(tmp_path / "missing.toml")], env)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_nightly_here_rebuilds_the_site_and_keeps_it_when_the_job_fails(head, submitted, tmp_path):
    _, env, _ = head
    spec, out, _ = submitted
    index = out / "site" / "index.html"
    before = index.stat().st_ino if index.exists() else None
    ok = run([str(NIGHTLY), str(spec)], env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    built = (index.stat().st_ino, index.read_bytes())
    assert built[0] != before  # a new build was switched in

    broken = write_spec(tmp_path / "broken.toml", out, layer="no_such_layer")
    failed = run([str(NIGHTLY), str(broken)], env)
    assert failed.returncode == 1
    assert "no_such_layer" in failed.stderr and "previous site of faults is unchanged" in failed.stderr
    assert (index.stat().st_ino, index.read_bytes()) == built
