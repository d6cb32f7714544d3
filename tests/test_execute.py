"""Worker planning from cluster resources, and incremental reruns (status, skip, stale, --force)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from raytools import local_ray, tiny_spec, write_spec

from atlas.cli import main
from atlas.models.registry import build
from atlas.plan.spec import ExecuteSpec
from atlas.run.executor import (
    RENDER_UNITS_PER_GPU_CALL,
    ExecuteError,
    WorkerPlan,
    check_address,
    plan_workers,
)
from atlas.store.store import Store

AUTO = ExecuteSpec()


def test_auto_uses_one_worker_per_gpu_when_the_cluster_has_gpus():
    nodes = [{"CPU": 8, "GPU": 4}, {"CPU": 8, "GPU": 4}]
    plan = plan_workers(AUTO, {"CPU": 16, "GPU": 8}, nodes)
    assert plan == WorkerPlan(8, cpus=1, gpus=1) and plan.device == "auto"
    assert plan.describe() == "8 workers x 1 GPU"


def test_auto_without_gpus_gives_cpu_workers_of_two_cores():
    plan = plan_workers(AUTO, {"CPU": 8}, [{"CPU": 8}])
    assert plan == WorkerPlan(4, cpus=2, gpus=0) and plan.device == "cpu"


def test_fractional_gpus_share_a_device():
    plan = plan_workers(ExecuteSpec(gpus_per_worker=0.5), {"CPU": 8, "GPU": 2}, [{"CPU": 8, "GPU": 2}])
    assert (plan.count, plan.gpus) == (4, 0.5)


@pytest.mark.parametrize(
    ("execute", "total", "nodes", "message"),
    [
        (
            ExecuteSpec(gpus_per_worker=1),
            {"CPU": 4},
            [{"CPU": 4}],
            r"1 GPU\(s\) per worker but the cluster has 0",
        ),
        (
            ExecuteSpec(gpus_per_worker=2),
            {"CPU": 8, "GPU": 2},
            [{"CPU": 4, "GPU": 1}, {"CPU": 4, "GPU": 1}],
            "at most 1 on one node",
        ),
        (ExecuteSpec(gpus_per_worker=1), {"CPU": 0, "GPU": 1}, [{"CPU": 0, "GPU": 1}], "needs one CPU"),
    ],
)
def test_gpu_requests_the_cluster_cannot_meet_fail_with_the_fix(execute, total, nodes, message):
    with pytest.raises(ExecuteError, match=message) as info:
        plan_workers(execute, total, nodes)
    assert "gpus_per_worker" in str(info.value) or "CPU" in str(info.value)


def test_a_cpu_worker_never_asks_for_more_than_one_node_has():
    plan = plan_workers(ExecuteSpec(workers=1), {"CPU": 4}, [{"CPU": 2}, {"CPU": 2}])
    assert plan == WorkerPlan(1, cpus=2, gpus=0)


def test_a_dashboard_url_is_not_a_driver_address():
    with pytest.raises(ExecuteError, match="RAY_ADDRESS is http://127.0.0.1:8265, a dashboard URL"):
        check_address("http://127.0.0.1:8265", "RAY_ADDRESS")


def test_an_address_where_nothing_listens_fails_at_once():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ExecuteError, match=f"nothing answers at 127.0.0.1:{port} \\(execute.address\\)"):
        check_address(f"127.0.0.1:{port}", "execute.address")


@pytest.fixture(scope="module")
def cluster():
    with local_ray(num_cpus=2) as address:
        yield address


def status_counts(spec: Path) -> dict[str, int]:
    result = CliRunner().invoke(main, ["status", str(spec)])
    assert result.exit_code == 0, result.output
    return {name: int(n) for name, n in re.findall(r"(\w+): (\d+)", result.output.splitlines()[0])}


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["run", *args, "--no-site"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_reruns_compute_exactly_what_changed(cluster, tmp_path):
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "job.toml", out, channels="0:3", workers=1)
    assert status_counts(spec) == {"done": 0, "pending": 3, "failed": 0, "stale": 0}
    assert "3 units done, 0 already done, 0 failed" in run_cli(str(spec))
    assert status_counts(spec) == {"done": 3, "pending": 0, "failed": 0, "stale": 0}
    first = {e.key: e.sha256 for e in Store(out).entries()}

    more = write_spec(tmp_path / "more.toml", out, channels="0:4", workers=1)
    assert status_counts(more) == {"done": 3, "pending": 1, "failed": 0, "stale": 0}
    assert "1 units done, 3 already done" in run_cli(str(more))
    assert {k: v for k, v in ((e.key, e.sha256) for e in Store(out).entries()) if k in first} == first

    slower = write_spec(tmp_path / "slower.toml", out, channels="0:4", steps=5, workers=1)
    assert status_counts(slower) == {"done": 0, "pending": 4, "failed": 0, "stale": 4}

    weights = tmp_path / "tiny.pt"
    module, _ = build("tiny-cnn")
    state = {name: tensor + 0.01 for name, tensor in module.state_dict().items()}
    torch.save(state, weights)
    retrained = (
        write_spec(tmp_path / "retrained.toml", out, channels="0:4", workers=1)
        .read_text()
        .replace('name = "tiny-cnn"', f'name = "tiny-cnn"\ncheckpoint = "{weights}"')
    )
    (tmp_path / "retrained.toml").write_text(retrained)
    assert status_counts(tmp_path / "retrained.toml") == {"done": 0, "pending": 4, "failed": 0, "stale": 4}

    assert "4 units done, 0 already done" in run_cli(str(more), "--force")
    assert status_counts(more) == {"done": 4, "pending": 0, "failed": 0, "stale": 0}


@pytest.mark.slow
def test_workers_of_a_started_cluster_run_at_normal_priority(tmp_path):
    """Ray's default niceness 15 would let any busy process slow the atlas workers several times."""
    import ray

    from atlas.run.executor import Executor

    if ray.is_initialized():
        ray.shutdown()
    executor = Executor(tiny_spec(tmp_path / "out"))
    try:
        pids = executor.worker_pids(timeout=120)
        assert pids and all(os.getpriority(os.PRIO_PROCESS, pid) == 0 for pid in pids)
    finally:
        executor.shutdown()
        ray.shutdown()


@pytest.mark.parametrize("setting", ["auto", 1, 5])
@pytest.mark.parametrize("gpus", [0.0, 1.0])
def test_gpu_workers_get_many_render_units_per_call_cpu_workers_one(setting, gpus):
    plan = WorkerPlan(count=1, cpus=1.0, gpus=gpus)
    expected = setting if setting != "auto" else (RENDER_UNITS_PER_GPU_CALL if gpus else 1)
    assert plan.units_per_call(ExecuteSpec(units_per_call=setting)) == expected


@pytest.mark.slow
def test_packed_calls_commit_every_unit_with_the_pictures_of_unpacked_ones(cluster, tmp_path):
    rows = {}
    for per_call in (1, 3):
        out = tmp_path / f"out{per_call}"
        spec = write_spec(tmp_path / f"job{per_call}.toml", out, channels="0:5", workers=1)
        spec.write_text(spec.read_text() + f"units_per_call = {per_call}\n")
        assert "5 units done, 0 already done, 0 failed" in run_cli(str(spec))
        store = Store(out)
        rows[per_call] = {
            entry.key: store.read_unit(entry.key, "render", ["channel", "activation"]).to_pylist()
            for entry in store.entries()
        }
    assert rows[1].keys() == rows[3].keys() and len(rows[1]) == 5
    for key, alone in rows[1].items():
        for a, b in zip(alone, rows[3][key], strict=True):
            assert a["channel"] == b["channel"] and a["activation"] == pytest.approx(
                b["activation"], rel=1e-5
            )
