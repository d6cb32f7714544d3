"""A two-node Ray cluster (ray.cluster_utils.Cluster): losing a node, and jobs the cluster cannot run."""

from __future__ import annotations

import os
import time

import pytest
import ray
from ray.cluster_utils import Cluster
from raytools import env_with_tests_on_path, tiny_spec

from atlas.kinds.render import RenderWork
from atlas.plan.units import Unit
from atlas.run.executor import ExecuteError, Executor, WorkerPlan
from atlas.run.job import prepare
from atlas.store.store import Store

pytestmark = pytest.mark.slow

SLOW = {"model": "module:faultmodels:slow_cnn", "layer": "slow"}


@pytest.fixture(scope="module")
def two_nodes():
    """A head and one more node, one CPU each; workers import tests/ modules through PYTHONPATH."""
    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env_with_tests_on_path()["PYTHONPATH"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        extra = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster, extra
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def test_gpu_workers_on_a_cluster_without_gpus_fail_at_once(two_nodes, tmp_path):
    spec = tiny_spec(tmp_path / "out", extra="gpus_per_worker = 1")
    with pytest.raises(ExecuteError, match=r"1 GPU\(s\) per worker but the cluster has 0"):
        Executor(spec)


def test_worker_that_cannot_load_the_model_stops_the_job(two_nodes, tmp_path):
    spec = tiny_spec(tmp_path / "out", model="module:no_such_module_here:build")
    executor = Executor(spec, WorkerPlan(1, cpus=1, gpus=0))
    try:
        with pytest.raises(ExecuteError, match="could not load the model.*no_such_module_here"):
            executor.run([Unit("conv2", (0,), "render-test", RenderWork(spec.render))], Store(spec.out))
    finally:
        executor.shutdown()


def test_workers_too_big_for_the_cluster_fail_after_the_start_timeout(two_nodes, tmp_path):
    spec = tiny_spec(tmp_path / "out")
    executor = Executor(spec, WorkerPlan(1, cpus=8, gpus=0), start_timeout=2)
    try:
        with pytest.raises(ExecuteError, match="no worker could start within 2 s: each needs 8 CPU"):
            executor.run([Unit("conv2", (0,), "render-test", RenderWork(spec.render))], Store(spec.out))
    finally:
        executor.shutdown()


def test_job_completes_when_a_node_is_removed_mid_run(two_nodes, tmp_path):
    cluster, extra = two_nodes
    spec = tiny_spec(tmp_path / "out", channels="0:6", steps=8, **SLOW)
    units = prepare(spec).plan.units
    executor = Executor(spec)
    assert executor.workers_plan == WorkerPlan(2, cpus=1, gpus=0)  # one per node
    try:
        executor.worker_pids(timeout=120)
        removed: list[float] = []

        def remove_node_once(unit, outcome):
            if not removed:
                cluster.remove_node(extra, allow_graceful=False)
                removed.append(time.monotonic())

        report = executor.run(units, Store(spec.out), on_progress=remove_node_once)
    finally:
        executor.shutdown()
    assert removed, "the node was never removed"
    assert (report.done, report.failed) == (6, [])
    assert report.retried >= 1  # the removed node's calls ran again on the head
    store = Store(spec.out)
    assert all(store.has(u.key) for u in units)
