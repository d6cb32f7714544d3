"""Dataset examples: which real images excite or inhibit each channel, and how strongly.

Three parts, one module each: `partial` (the mergeable result of scanning some images),
`scan` (one dataset shard -> a partial) and `finalize` (the merged partial -> the `examples`
and `histogram` tables of docs/STORE.md, with receptive-field crops).
"""

from atlas.kinds.examples.finalize import finalize_layer
from atlas.kinds.examples.partial import (
    DEFAULT_SAMPLE_SIZE,
    HIST_EDGES,
    LayerScan,
    PartialScan,
    ScanError,
    TopK,
    base_layer,
    direction_layer,
    source_priority,
)
from atlas.kinds.examples.scan import BatchScanner, scan_shard

__all__ = [
    "BatchScanner",
    "DEFAULT_SAMPLE_SIZE",
    "HIST_EDGES",
    "LayerScan",
    "PartialScan",
    "ScanError",
    "TopK",
    "base_layer",
    "direction_layer",
    "finalize_layer",
    "scan_shard",
    "source_priority",
]
