"""GPU nodes that scale from zero: ask the autoscaler for them, wait, and withdraw the request.

A job that wants GPUs on a cluster with none up would otherwise fail (or, asking Ray for them,
wait forever). When the cluster's autoscaler has a node type that provides them, the job asks
for them with `request_resources` and waits, bounded by `execute.scale_up_timeout`, saying what
it waits for; when no node type ever can, it fails at once with the fix. A resource request
stays until replaced, so the job withdraws it when it ends, whatever the outcome, and the
autoscaler can take the GPU nodes back down after its idle timeout.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml

from atlas.core.errors import AtlasError
from atlas.plan.spec import ExecuteSpec

_log = logging.getLogger(__name__)
_POLL_S = 1.0


class ScaleUpError(AtlasError):
    """The job needs GPUs that the cluster does not have and cannot get in time."""


@dataclass(frozen=True)
class NodeType:
    name: str
    gpus: float
    max_count: int  # -1: unbounded


def node_types() -> list[NodeType] | None:
    """The autoscaler's worker node types, or None when the cluster has no autoscaler.

    Autoscaler v2 publishes its config in the GCS (Ray Data and Train read it there too; Ray
    has no public call for it yet). Autoscaler v1 does not, so the config file it was started
    with is read instead: `~/ray_bootstrap_config.yaml`, which `ray up` writes on the head where
    `ray job submit` runs the driver, or the file named by ATLAS_AUTOSCALING_CONFIG.
    """
    config = ray._private.state.state.get_cluster_config()
    if config is not None:
        return [
            NodeType(group.name, float(group.resources.get("GPU", 0)), int(group.max_count))
            for group in config.node_group_configs
        ]
    path = Path(os.environ.get("ATLAS_AUTOSCALING_CONFIG", "~/ray_bootstrap_config.yaml")).expanduser()
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text()) or {}
    head = raw.get("head_node_type")
    return [
        NodeType(name, float((kind.get("resources") or {}).get("GPU", 0)), int(kind.get("max_workers", 0)))
        for name, kind in (raw.get("available_node_types") or {}).items()
        if name != head
    ]


def gpus_per_worker(execute: ExecuteSpec) -> float:
    """What one worker asks for: "auto" means one GPU when the cluster has or can get them."""
    return 1.0 if execute.gpus_per_worker == "auto" else float(execute.gpus_per_worker)


def live_gpus_per_node() -> list[float]:
    return [float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]


class GpuRequest:
    """At most one outstanding request per job: `ensure` asks and waits, `release` withdraws."""

    def __init__(self) -> None:
        self.active = False

    def ensure(self, execute: ExecuteSpec, say: Callable[[str], None] | None = None) -> None:
        """Return once the cluster has a node with the GPUs one worker needs (or none are needed).

        Does nothing when a live node has them, when the job runs on CPUs, or when the cluster
        has no autoscaler (the worker planning then reports what is missing). Raises ScaleUpError
        when the autoscaler cannot ever add such a node, or none joins within the timeout.
        """
        need = gpus_per_worker(execute)
        if need <= 0 or max(live_gpus_per_node(), default=0.0) >= need:
            return
        types = node_types()
        if types is None:
            return
        able = [t for t in types if t.gpus >= need and t.max_count != 0]
        if not able:
            if execute.gpus_per_worker == "auto":
                return  # nothing to wait for: run on CPUs
            offered = ", ".join(f"{t.name} ({t.gpus:g} GPU, max {t.max_count})" for t in types) or "none"
            raise ScaleUpError(
                f"the job asks for {need:g} GPU(s) per worker, but no node type of this cluster's "
                f"autoscaler can ever provide that (node types: {offered}). Add a GPU node type with "
                "max_workers >= 1 to cluster.yaml (then `ray up`), or set execute.gpus_per_worker = 0"
            )
        workers = execute.workers if isinstance(execute.workers, int) else 1
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": need, "CPU": 1}] * workers)
        self.active = True
        names = " or ".join(t.name for t in able)
        start, next_say = time.monotonic(), 0.0
        while max(live_gpus_per_node(), default=0.0) < need:
            waited = time.monotonic() - start
            if waited > execute.scale_up_timeout:
                raise ScaleUpError(
                    f"asked the autoscaler for {workers} GPU node(s) ({names}) but none joined within "
                    f"{execute.scale_up_timeout:g} s; check `ray status` and the autoscaler log "
                    "(/tmp/ray/session_latest/logs/monitor.*), cloud quotas and spot capacity, or "
                    "raise execute.scale_up_timeout"
                )
            if waited >= next_say:  # every 10 s: a node takes minutes to boot
                (say or _log.warning)(
                    f"waiting for the autoscaler to add a GPU node ({names}): "
                    f"{waited:.0f} s of at most {execute.scale_up_timeout:g} s"
                )
                next_say += 10.0
            time.sleep(_POLL_S)

    def release(self) -> None:
        """Withdraw the request (an empty one replaces it), so idle GPU nodes can scale down."""
        if not self.active or not ray.is_initialized():
            return
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])
        self.active = False


# The one request of this driver process: worker planning asks through it, the job runner
# withdraws it when the job ends.
GPUS = GpuRequest()
