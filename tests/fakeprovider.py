"""Ray's fake multinode provider, with fake nodes that Ray's liveness check covers.

Ray 2.60's `FakeMultiNodeProvider` marks a new node up to date, but the autoscaler's launcher
passes `ray-node-status: uninitialized` in the node's tags and the provider lets them win. The
autoscaler only checks the heartbeats of up-to-date nodes, so a fake node whose raylet dies by
itself (on a loaded machine: a failed agent, a missed GCS health check) stays listed, and
counted, for good. The job's standing GPU request then fits on that dead node, the autoscaler
adds no other, and the job waits out its start timeout (seen by killing a fake node's raylet:
no replacement in 45 s; with this provider, one within about 30 s). On a cloud, nodes come up
to date after setup and a silent one is replaced; this provider does the same.
"""

from __future__ import annotations

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import STATUS_UP_TO_DATE, TAG_RAY_NODE_STATUS


class LivenessCheckedFakeProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        up_to_date = {**tags, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE}
        super()._create_node_with_resources_and_labels(node_config, up_to_date, count, resources, labels)
