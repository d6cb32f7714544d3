"""GPU nodes from zero on Ray's fake autoscaling cluster: the job asks, waits, runs, and lets go.

Ray's `AutoscalingCluster` helper runs `ray stop --force` (it would kill every Ray on this shared
machine) and needs an example file the wheel lacks, so the fixture starts the same fake cluster
itself: a head started with an autoscaling config whose provider is Ray's fake multinode one
(worker "nodes" are raylets on this machine), with its own port and temp dir, killed by that dir.
The provider is tests/fakeprovider.py's subclass: with Ray's own, a fake node whose raylet dies
on a loaded machine is never replaced and the job waits out its start timeout (see there). The
test failed only after other modules: see the auth-mode reset in the fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray._private.authentication_test_utils import reset_auth_token_state
from ray.experimental.internal_kv import _internal_kv_get
from raytools import env_with_tests_on_path, tiny_spec
from test_cluster_submit import free_ports, kill_processes_naming

import atlas.run.executor as execute_module
from atlas.run.autoscale import ScaleUpError
from atlas.run.job import run_job

pytestmark = pytest.mark.slow

GPU_TYPE = {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}


def fake_config(gcs: str) -> dict:
    """A cluster config for the fake provider: a 1-CPU head and one GPU node type, min 0."""
    return {
        "cluster_name": "atlas-fake",
        "max_workers": 1,
        "provider": {
            "type": "external",
            "module": "fakeprovider.LivenessCheckedFakeProvider",
            "gcs_address": gcs,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu": GPU_TYPE,
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # 6 s: idle GPU nodes go soon after the job
        "docker": {},
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{
            key: []
            for key in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, config path) of a fake autoscaling cluster with no GPU node up."""
    if ray.is_initialized():
        ray.shutdown()
    root = Path(tempfile.mkdtemp(prefix="rayfa", dir="/tmp"))  # short: Ray's socket paths are long
    gcs_port, dashboard, agent = free_ports(3)
    gcs = f"{ray.util.get_node_ip_address()}:{gcs_port}"
    config = root / "autoscaling.json"
    config.write_text(json.dumps(fake_config(gcs)))
    env = env_with_tests_on_path() | {  # the autoscaler imports the provider from tests/
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",  # a fake node that died is replaced within seconds
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    start = [
        "ray", "start", "--head", f"--port={gcs_port}", f"--autoscaling-config={config}", "--num-cpus=1",
        "--include-dashboard=false", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
        f"--temp-dir={root}",
        "--disable-usage-stats",
    ]  # fmt: skip
    # Once any local Ray started in this process (another test module), Ray 2.60 leaves it in
    # token-auth mode (RAY_AUTH_MODE=token, and its C++ config read from it). A driver in that
    # mode rejects the GCS's unauthenticated calls to it, and the GCS of this cluster (started
    # without auth) then takes every actor the driver owns for out of scope and cancels it
    # before it starts: the job lost its workers and failed, after other modules only.
    saved = {name: os.environ.get(name) for name in ("ATLAS_AUTOSCALING_CONFIG", "RAY_AUTH_MODE")}
    os.environ.update(ATLAS_AUTOSCALING_CONFIG=str(config), RAY_AUTH_MODE="disabled")
    reset_auth_token_state()
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
        yield gcs
    finally:
        if ray.is_initialized():
            ray.shutdown()
        kill_processes_naming(str(root))
        shutil.rmtree(root, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_auth_token_state()


def gpu_node_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU", 0) > 0}


def gpu_nodes() -> int:
    return len(gpu_node_ids())


def unit_worker_nodes() -> set[str]:
    """The nodes the job's UnitWorker actors ran on, from the GCS's actor table."""
    actors = ray._private.state.actors().values()
    return {a["Address"]["NodeID"] for a in actors if a["ActorClassName"].endswith("UnitWorker")}


def test_a_job_scales_gpu_nodes_up_from_zero_and_back_down(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec(
        tmp_path / "out",
        channels="0:2",
        steps=2,
        workers=1,
        extra=f'gpus_per_worker = 1\naddress = "{cluster}"',
    )
    try:
        ray.init(address=cluster, log_to_driver=False)
        assert gpu_nodes() == 0
        seen: set[str] = set()  # the GPU nodes up when the job plans its workers
        plan = execute_module.cluster_worker_plan

        def planning(execute):
            chosen = plan(execute)  # returns once the autoscaler has added the GPU nodes
            seen.update(gpu_node_ids())
            return chosen

        monkeypatch.setattr(execute_module, "cluster_worker_plan", planning)
        result = run_job(spec, build=False)
        assert result.ok and result.done == 2, result.failed
        assert seen, "the job planned its workers before a GPU node was added"
        assert unit_worker_nodes() and unit_worker_nodes() <= seen  # the units ran on the added nodes
        assert json.loads(_internal_kv_get(b"autoscaler_resource_request")) == []  # request withdrawn
        deadline = time.monotonic() + 60
        while gpu_nodes() and time.monotonic() < deadline:  # so the idle GPU nodes go
            time.sleep(1)
        assert gpu_nodes() == 0, "the GPU node stayed up after the job withdrew its request"
    finally:
        ray.shutdown()


def test_gpus_no_node_type_provides_fail_at_once_with_the_fix(cluster: str, tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path / "out", workers=1, extra=f'gpus_per_worker = 2\naddress = "{cluster}"')
    start = time.monotonic()
    try:
        with pytest.raises(
            ScaleUpError, match=r"no node type .* can ever provide .*gpu \(1 GPU, max 1\).*max_workers"
        ):
            run_job(spec, build=False)
    finally:
        ray.shutdown()
    assert time.monotonic() - start < 60  # no waiting for the scale-up timeout (900 s)
