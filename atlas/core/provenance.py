"""Where a result was computed (software versions, device) and when two runs count as the same.

GPU runs are not bitwise reproducible: cuDNN picks algorithms per shape and machine, and
atomics in some backward kernels add in any order, so two runs of the same unit on GPUs differ
in the last bits, and 512 optimization steps can grow that into visibly different pictures that
excite their channel just as much. Content keys therefore name *what* was computed, and
provenance names *where*: every shard a worker writes carries its environment in the Parquet
schema metadata (key ``atlas.core.provenance``), and job.json carries the driver's. When two runs of
a unit count as the same: `run_differences` (bitwise on CPUs, a tolerance on activations on GPUs).
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"atlas.core.provenance"
# Two renders of one unit agree when each image's activation differs by at most this fraction
# of the larger of the two (with ACTIVATION_FLOOR as the smallest scale that counts).
ACTIVATION_RTOL = 0.05
ACTIVATION_FLOOR = 1e-2


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version, from the kernel module or nvidia-smi; None without one."""
    version_file = Path("/proc/driver/nvidia/version")
    if version_file.is_file():
        for word in version_file.read_text().split():
            if word.count(".") >= 1 and word.replace(".", "").isdigit():
                return word
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


@functools.cache
def provenance(device: str = "cpu") -> dict[str, str | None]:
    """torch, CUDA, cuDNN and driver versions and the device (with its name on CUDA)."""
    import torch  # here: readers of stores import this module and need no torch

    dev = torch.device(device)
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if cuda else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn else None,
        "driver": _nvidia_driver() if cuda else None,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu",
        "python": platform.python_version(),
    }


def with_provenance(table: pa.Table, info: dict) -> pa.Table:
    """The table with ``info`` in its schema metadata (it travels inside the Parquet file)."""
    metadata = dict(table.schema.metadata or {})
    metadata[METADATA_KEY] = json.dumps(info, sort_keys=True).encode()
    return table.replace_schema_metadata(metadata)


def read_provenance(path: str | Path) -> dict | None:
    """The environment a shard was computed in, from its Parquet metadata; None if it has none."""
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(METADATA_KEY)
    return json.loads(raw) if raw else None


def table_provenance(table: pa.Table) -> dict | None:
    """The environment a table was computed in, from its metadata; None if it has none."""
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None


def computed_on(table: pa.Table) -> str | None:
    """The device a table was computed on ("cpu", "cuda:0"); None if unknown."""
    return (table_provenance(table) or {}).get("device")


def run_differences(first: pa.Table, second: pa.Table) -> list[str]:
    """Why two results of one unit do not count as the same run (empty: they do).

    Computed on CPUs both times, a unit is deterministic: the tables must be equal, pixels
    included. Computed on a GPU either time (or where unknown), render tables are held to
    `render_differences`: the same rows, activations within a tolerance.
    """
    if computed_on(first) == computed_on(second) == "cpu":
        return [] if first.equals(second) else ["the tables differ, and on CPUs two runs are identical"]
    return render_differences(first, second)


def render_differences(first: pa.Table, second: pa.Table, rtol: float = ACTIVATION_RTOL) -> list[str]:
    """Why two `render` tables of the same unit do not count as the same run (empty: they do).

    Same rows (layer, channel, channel_b, objective, variant) and, per row, activations within
    ``rtol`` of the larger magnitude (at least ``ACTIVATION_FLOOR``). Pixels are not compared:
    on a GPU they may differ while the picture does its job equally well.
    """
    names = ("layer", "channel", "channel_b", "objective", "variant")

    def rows(table: pa.Table) -> dict[tuple, float]:
        columns = [table.column(n).to_pylist() for n in (*names, "activation")]
        return {tuple(row[:-1]): row[-1] for row in zip(*columns, strict=True)}

    a, b = rows(first), rows(second)
    if a.keys() != b.keys():
        missing = sorted(a.keys() ^ b.keys(), key=str)
        return [f"rows differ: {missing[:3]}{' ...' if len(missing) > 3 else ''}"]
    problems = []
    for row, value in a.items():
        other = b[row]
        scale = max(abs(value), abs(other), ACTIVATION_FLOOR)
        if abs(value - other) > rtol * scale:
            problems.append(f"{row}: activation {value:.4g} vs {other:.4g} (more than {rtol:.0%} apart)")
    return problems
