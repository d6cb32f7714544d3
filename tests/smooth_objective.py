"""A plugin objective, registered from outside the package (tests/test_plugins.py installs it).

"smooth": a channel's mean activation with a total-variation penalty, so its images are calmer
than the plain channel objective's. Nothing under atlas/ names it.
"""

from collections.abc import Sequence

from atlas.optvis import objectives as obj
from atlas.optvis.named import register_objective

SMOOTHING = 0.05


@register_objective("smooth", ("Smooth", "Smooth optimized"))
def smooth(layer: str, channels: int | Sequence[int], batch: obj.Batch = None) -> obj.Objective:
    return obj.channel(layer, channels, batch=batch) - SMOOTHING * obj.total_variation(batch=batch)
