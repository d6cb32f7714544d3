"""The scan loop: one dataset shard -> one `PartialScan`, one truncated forward pass per batch.

Directions in activation space (random directions for the interactions view) are scored like
extra channels: `directions={"conv3": tensor[n, C]}` adds the pseudo-layer `conv3@direction`
whose channel i is the projection of the activation vector onto direction i at each position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch

from atlas.data import ImageSource, ShardRef, SkippedInput
from atlas.examples.decode import Batch, Decoder, scan_decoder
from atlas.examples.partial import (
    DEFAULT_SAMPLE_SIZE,
    HIST_BINS,
    LayerScan,
    PartialScan,
    ScanError,
    TopK,
    bin_index,
    direction_layer,
    source_priority,
)
from atlas.models import LoadedModel


def _batches(
    source: ImageSource,
    source_ids: Sequence[str],
    batch_size: int,
    size: int,
    prefetch: bool,
    decoder: Decoder,
) -> Iterator[Batch]:
    """Decoded, resized batches as uint8 [B, H, W, 3] arrays or tensors, with what was skipped
    or converted.

    With `prefetch` the next batch decodes in a thread while this one runs: right when a GPU
    computes and the CPU waits, wrong on CPU, where torch already keeps every core busy and a
    decoding thread stalls its thread pool (measured 4x slower forward passes on 2 cores).
    """

    def load(chunk: Sequence[str]) -> Batch:
        return decoder(source, chunk, size)

    chunks = [source_ids[i : i + batch_size] for i in range(0, len(source_ids), batch_size)]
    if not prefetch:
        yield from map(load, chunks)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for index in range(len(chunks)):
            current = pending.result()
            pending = pool.submit(load, chunks[index + 1]) if index + 1 < len(chunks) else None
            yield current


class BatchScanner:
    """Scores decoded batches on one model: the per-batch step of every scan, wherever it runs.

    Built once per worker (it resolves the layers and checks the directions); `scan` turns one
    batch into a `PartialScan`, so a shard's scan is a fold of `PartialScan.merge` over batches.
    `directions` maps a layer to an [n, C] tensor; each row becomes channel i of the pseudo-layer
    `<layer>@direction` (projection of the activation vector at each position onto the row).
    `precision` is the forward pass's: `auto` runs it in bf16 autocast on a CUDA device that
    has bf16 (channels_last, as the model is kept), fp32 elsewhere; activations are kept as
    float32 whatever it is.
    """

    def __init__(
        self,
        model: LoadedModel,
        layers: Sequence[str],
        k: int = 10,
        directions: Mapping[str, torch.Tensor] | None = None,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        on_batch: Callable[[list[str], Mapping[str, torch.Tensor]], None] | None = None,
        precision: str = "auto",
    ):
        self.on_batch = on_batch  # sees each batch's float32 outputs (the activation atlas's vectors)
        if k < 1:
            raise ScanError(f"k must be at least 1, got {k}")
        if precision not in PRECISIONS:
            raise ScanError(f"unknown scan precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.bf16 = precision == "bf16" or (precision == "auto" and _has_bf16(model.device))
        self.model, self.k, self.sample_size = model, k, sample_size
        self.names = [model.resolve_layer(name) for name in layers]
        self.directions = {
            model.resolve_layer(n): d.detach().to(model.device, torch.float32)
            for n, d in (directions or {}).items()
        }
        for name, rows in self.directions.items():
            if rows.ndim != 2 or rows.shape[1] != model.channels(name):
                raise ScanError(
                    f"directions for {name!r} must have shape [n, {model.channels(name)}], got {list(rows.shape)}"
                )
        self.channels = {name: model.channels(name) for name in self.names}
        self.channels.update({direction_layer(n): rows.shape[0] for n, rows in self.directions.items()})
        self.needed = sorted(set(self.names) | set(self.directions))

    def empty(self) -> PartialScan:
        return PartialScan.empty(self.channels, self.k, self.sample_size)

    def scan(self, ids: list[str], pixels: np.ndarray | torch.Tensor) -> PartialScan:
        """One batch of uint8 [B, H, W, 3] images at the model's input size (no stats)."""
        device = self.model.device
        pixels = torch.as_tensor(pixels)
        if pixels.device.type == "cuda":  # decoded on another stream: keep it until used here
            pixels.record_stream(torch.cuda.current_stream(pixels.device))
        x01 = pixels.to(device).permute(0, 3, 1, 2).float().div_(255.0)
        x01 = x01.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # not inference_mode: its tensors would poison later autograd
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                outputs = self.model.activations(x01, self.needed)
            outputs = {name: output.float() for name, output in outputs.items()}
            if self.on_batch is not None:
                self.on_batch(ids, outputs)
            maps = {name: _as_map(outputs[name]) for name in self.names}
            maps.update(
                {
                    direction_layer(n): torch.einsum("bchw,nc->bnhw", _as_map(outputs[n]), rows)
                    for n, rows in self.directions.items()
                }
            )
            return _batch_partial(maps, ids, self.k, self.sample_size)


def scan_shard(
    model: LoadedModel,
    layers: Sequence[str],
    source: ImageSource,
    shard: ShardRef,
    k: int = 10,
    batch_size: int = 32,
    directions: Mapping[str, torch.Tensor] | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    on_batch: Callable[[list[str], Mapping[str, torch.Tensor]], None] | None = None,
    decoder: Decoder | None = None,
    precision: str = "auto",
) -> PartialScan:
    """Scan one shard in this process: one truncated forward pass per batch records every layer.

    Bad images are skipped or converted and counted in `stats`; they never stop the scan.
    `decoder` defaults to the device's (`scan_decoder`: JPEGs decoded on a GPU, PIL on the CPU);
    `precision` is `BatchScanner`'s.
    """
    scanner = BatchScanner(model, layers, k, directions, sample_size, on_batch, precision)
    partial = scanner.empty()
    stats: Counter[str] = Counter()
    skipped: list[SkippedInput] = []
    prefetch = model.device.type != "cpu"
    decoder = decoder or scan_decoder(model.device)
    batches = _batches(source, shard.source_ids, batch_size, model.input_size, prefetch, decoder)
    for ids, pixels, counts, bad in batches:
        stats.update(counts)
        skipped += bad
        if pixels is None:
            continue
        stats["scanned"] += len(ids)
        partial = partial.merge(scanner.scan(ids, pixels))
    return replace(partial, stats=dict(sorted(stats.items())), skipped=tuple(skipped))


PRECISIONS = ("auto", "fp32", "bf16")


def _has_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _as_map(output: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] float32; vector outputs (logits) become 1 x 1 maps."""
    output = output.float()
    return output[:, :, None, None] if output.ndim == 2 else output


def _reduce(act: torch.Tensor, in_numpy: bool) -> tuple[np.ndarray, ...]:
    """Per image and channel: max, argmax, min, argmin over positions ([B, C]) and the histogram.

    On CUDA the reductions stay on the GPU; on CPU numpy does them (`in_numpy`), because
    single-threaded numpy beats torch's thread pool by 10x for these memory-bound passes on a
    shared machine. Both give the same numbers.
    """
    batch, channels = act.shape[:2]
    if in_numpy:
        flat = act.contiguous().numpy().reshape(batch, channels, -1)
        max_i, min_i = flat.argmax(axis=2), flat.argmin(axis=2)
        max_v = np.take_along_axis(flat, max_i[..., None], axis=2)[..., 0]
        min_v = np.take_along_axis(flat, min_i[..., None], axis=2)[..., 0]
        offsets = (np.arange(channels, dtype=np.int32) * HIST_BINS)[None, :, None]
        bins = bin_index(flat.view(np.int32), np) + offsets
        histogram = np.bincount(bins.ravel(), minlength=channels * HIST_BINS)
        return max_v, max_i, min_v, min_i, histogram.reshape(channels, HIST_BINS)
    flat = act.contiguous().flatten(2)
    max_v, max_i = flat.max(dim=2)
    min_v, min_i = flat.min(dim=2)
    offsets = (torch.arange(channels, device=act.device, dtype=torch.int32) * HIST_BINS).view(1, channels, 1)
    bins = bin_index(flat.view(torch.int32), torch) + offsets
    histogram = torch.bincount(bins.flatten(), minlength=channels * HIST_BINS).view(channels, HIST_BINS)
    return tuple(t.cpu().numpy() for t in (max_v, max_i, min_v, min_i, histogram))


def _batch_partial(maps: Mapping[str, torch.Tensor], ids: list[str], k: int, sample_size: int) -> PartialScan:
    """The partial scan of one batch, so a shard's scan is a fold of `merge` (same code path)."""
    priority = source_priority(ids)
    keep = np.lexsort((np.array(ids), priority))[:sample_size]
    id_grid = np.array(ids)
    layers = {}
    for name, act in maps.items():
        batch, channels, _, width = act.shape
        max_v, max_i, min_v, min_i, histogram = _reduce(act, in_numpy=act.device.type == "cpu")
        max_y, max_x = (max_i // width).astype(np.int32), (max_i % width).astype(np.int32)
        min_y, min_x = (min_i // width).astype(np.int32), (min_i % width).astype(np.int32)
        ids_cb = np.broadcast_to(id_grid, (channels, batch))
        layers[name] = LayerScan(
            TopK.empty(channels, k).merge(TopK(max_v.T, ids_cb, max_y.T, max_x.T)),
            TopK.empty(channels, k).merge(TopK(-min_v.T, ids_cb, min_y.T, min_x.T)),
            histogram.astype(np.int64),
            max_v[keep],
            max_y[keep],
            max_x[keep],
            min_v[keep],
            min_y[keep],
            min_x[keep],
        )
    return PartialScan(k, sample_size, layers, id_grid[keep], priority[keep], {})
