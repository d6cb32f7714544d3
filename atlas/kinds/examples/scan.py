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

from atlas.data.source import ImageSource, ShardRef, SkippedInput
from atlas.kinds.examples.decode import Batch, Decoder, scan_decoder
from atlas.kinds.examples.partial import (
    _SAMPLE_FIELDS,
    DEFAULT_SAMPLE_SIZE,
    FIRES,
    HIST_BINS,
    ZERO_BIN,
    LayerScan,
    PartialScan,
    ScanError,
    TopK,
    bin_index,
    direction_layer,
    source_priority,
)
from atlas.models import LoadedModel

SPARSE_SHARE = 0.1  # the histogram bins only nonzero values when at most this share is nonzero


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

    Built once per worker (it resolves the layers and checks the directions); `add` folds one
    batch into a `RunningScan` on the device (a shard's scan: nothing read back until its
    `partial()`), and `scan` turns one batch into a `PartialScan` (the same fold, read back).
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

    def running(self) -> RunningScan:
        """An empty running scan on the model's device, for `add` to fold batches into."""
        return RunningScan(self.channels, self.k, self.sample_size, self.model.device)

    def add(self, running: RunningScan, ids: list[str], pixels: np.ndarray | torch.Tensor) -> None:
        """Score one batch of uint8 [B, H, W, 3] images at the model's input size into `running`,
        on the device: nothing is read back to the host until `running.partial()`."""
        device = self.model.device
        pixels = torch.as_tensor(pixels)
        if pixels.device.type == "cuda":  # decoded on another stream: keep it until used here
            pixels.record_stream(torch.cuda.current_stream(pixels.device))
        x01 = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
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
            running.add(ids, maps)

    def scan(self, ids: list[str], pixels: np.ndarray | torch.Tensor) -> PartialScan:
        """One batch of uint8 [B, H, W, 3] images at the model's input size (no stats)."""
        running = self.running()
        self.add(running, ids, pixels)
        return running.partial()


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
    running = scanner.running()
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
        scanner.add(running, ids, pixels)
    return replace(running.partial(), stats=dict(sorted(stats.items())), skipped=tuple(skipped))


PRECISIONS = ("auto", "fp32", "bf16")


def _has_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def _as_map(output: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] float32; vector outputs (logits) become 1 x 1 maps."""
    output = output.float()
    return output[:, :, None, None] if output.ndim == 2 else output


def _reduce(act: torch.Tensor, in_numpy: bool) -> tuple[torch.Tensor, ...]:
    """Per image and channel: max, argmax, min, argmin over positions ([B, C]) and the histogram
    ([C, HIST_BINS] int64), as tensors on the activation's device.

    On CUDA torch reduces on the GPU; on CPU numpy does (`in_numpy`; returned as tensors sharing its memory),
    because single-threaded numpy beats torch's thread pool by 10x for these memory-bound passes
    on a shared machine. Both give the same numbers.
    """
    batch, channels = act.shape[:2]
    if in_numpy:
        flat = act.contiguous().numpy().reshape(batch, channels, -1)
        max_i, min_i = flat.argmax(axis=2), flat.argmin(axis=2)
        max_v = np.take_along_axis(flat, max_i[..., None], axis=2)[..., 0]
        min_v = np.take_along_axis(flat, min_i[..., None], axis=2)[..., 0]
        arrays = (max_v, max_i, min_v, min_i, _histogram_numpy(flat))
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    flat = act.contiguous().flatten(2)
    max_v, max_i = flat.max(dim=2)
    min_v, min_i = flat.min(dim=2)
    offsets = (torch.arange(channels, device=act.device, dtype=torch.int32) * HIST_BINS).view(1, channels, 1)
    bins = bin_index(flat.view(torch.int32), torch) + offsets
    histogram = torch.bincount(bins.flatten(), minlength=channels * HIST_BINS).view(channels, HIST_BINS)
    return max_v, max_i, min_v, min_i, histogram


def _histogram_numpy(flat: np.ndarray) -> np.ndarray:
    """[C, HIST_BINS] int64 counts of a [B, C, P] float32 array. A sparse autoencoder's features
    are zero almost everywhere: when at most SPARSE_SHARE of the values are nonzero, only those are
    binned and the zeros are added to the zero bin by count (the same numbers, 10x less work)."""
    batch, channels, positions = flat.shape
    bits = flat.view(np.int32)
    nonzero = (bits & 0x7FFFFFFF) != 0  # -0.0 is zero too, as bin_index has it
    if np.count_nonzero(nonzero) > SPARSE_SHARE * flat.size:  # dense: no index array of every value
        offsets = (np.arange(channels, dtype=np.int32) * HIST_BINS)[None, :, None]
        bins = bin_index(bits, np) + offsets
        return np.bincount(bins.ravel(), minlength=channels * HIST_BINS).reshape(channels, HIST_BINS)
    found = np.flatnonzero(nonzero)
    channel = (found // positions) % channels
    bins = bin_index(bits.ravel()[found], np) + channel * HIST_BINS
    histogram = np.bincount(bins, minlength=channels * HIST_BINS).reshape(channels, HIST_BINS)
    zeros = batch * positions - np.bincount(channel, minlength=channels)
    histogram[:, ZERO_BIN] += zeros
    return histogram


class _RunningTopK:
    """`TopK` kept on a device: values [C, k] float32 and, per entry, the image's number in the
    running scan (-1 for pads) and its position. Merged as `TopK.merge` does: a stable sort by
    the id's rank, then a stable sort by value, picks exactly what numpy's lexsort picks."""

    def __init__(self, channels: int, k: int, device: torch.device):
        self.values = torch.full((channels, k), -torch.inf, device=device)
        self.images = torch.full((channels, k), -1, dtype=torch.int64, device=device)
        self.ys = torch.zeros((channels, k), dtype=torch.int32, device=device)
        self.xs = torch.zeros((channels, k), dtype=torch.int32, device=device)

    def merge(
        self, values: torch.Tensor, images: torch.Tensor, index: torch.Tensor, width: int, rank: torch.Tensor
    ) -> None:
        """Fold in one batch: `values` [C, B], `images` [B] their numbers, `index` [C, B] the flat
        positions, `rank` the rank of each id (pads first) indexed by image number + 1."""
        channels, k = self.values.shape
        values = torch.cat([self.values, values], dim=1)
        images = torch.cat([self.images, images.expand(channels, -1)], dim=1)
        ys = torch.cat([self.ys, (index // width).int()], dim=1)
        xs = torch.cat([self.xs, (index % width).int()], dim=1)
        by_id = torch.argsort(rank[images + 1], dim=1, stable=True)
        keys = values.gather(1, by_id).neg().add(0.0)  # + 0.0: -0.0 ties with 0.0, as in numpy
        order = by_id.gather(1, torch.argsort(keys, dim=1, stable=True))[:, :k]
        self.values, self.images, self.ys, self.xs = (t.gather(1, order) for t in (values, images, ys, xs))

    def tensors(self) -> list[torch.Tensor]:
        return [self.values, self.images.int(), self.ys, self.xs]


class RunningScan:
    """A shard's statistics kept on the scan's device between batches (top-k, bottom-k,
    histograms, the sampled images' extremes, the images where each channel fires); `partial()`
    reads them back in one copy."""

    def __init__(self, channels: Mapping[str, int], k: int, sample_size: int, device: torch.device):
        self.k, self.sample_size, self.device = k, sample_size, device
        self.ids: list[str] = []
        self.sample_ids, self.sample_priority = np.zeros(0, "<U1"), np.zeros(0, np.uint64)
        self.layers = {
            name: (
                _RunningTopK(count, k, device),
                _RunningTopK(count, k, device),
                torch.zeros((count, HIST_BINS), dtype=torch.int64, device=device),
                [
                    torch.zeros((0, count), dtype=torch.float32 if i % 3 == 0 else torch.int32, device=device)
                    for i in range(len(_SAMPLE_FIELDS))
                ],
                torch.zeros(count, dtype=torch.int64, device=device),  # images where it fires
            )
            for name, count in channels.items()
        }

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, non_blocking=True)

    def add(self, ids: list[str], maps: Mapping[str, torch.Tensor]) -> None:
        """Fold one batch's [B, C, H, W] activation maps in, by layer, on their device."""
        first = len(self.ids)
        self.ids += ids
        _, inverse = np.unique(np.array(self.ids), return_inverse=True)
        rank = self._upload(np.concatenate([[-1], inverse.ravel()]).astype(np.int64))
        images = torch.arange(first, first + len(ids), device=self.device)
        sample_ids = np.concatenate([self.sample_ids, ids])
        priority = np.concatenate([self.sample_priority, source_priority(ids)])
        keep = np.lexsort((sample_ids, priority))[: self.sample_size]
        self.sample_ids, self.sample_priority = sample_ids[keep], priority[keep]
        keep_rows = self._upload(keep.astype(np.int64))
        for name, act in maps.items():
            top, bottom, histogram, sample, fired = self.layers[name]
            width = act.shape[3]
            max_v, max_i, min_v, min_i, counts = _reduce(act, in_numpy=act.device.type == "cpu")
            top.merge(max_v.T, images, max_i.T, width, rank)
            bottom.merge(-min_v.T, images, min_i.T, width, rank)
            histogram += counts
            fired += (max_v >= FIRES).sum(dim=0)
            batch = [max_v, (max_i // width).int(), (max_i % width).int()]
            batch += [min_v, (min_i // width).int(), (min_i % width).int()]
            for i, rows in enumerate(batch):
                sample[i] = torch.cat([sample[i], rows])[keep_rows]

    def partial(self) -> PartialScan:
        """The `PartialScan` of every batch added so far: one copy from the device."""
        pieces = []
        for top, bottom, histogram, sample, fired in self.layers.values():
            for t in [*top.tensors(), *bottom.tensors(), histogram, *sample, fired]:
                pieces.append(t.contiguous().view(torch.int32).flatten())
        host = torch.cat(pieces).cpu().numpy() if pieces else np.zeros(0, np.int32)
        names = np.array([*self.ids, ""])  # image number -1 is a pad's id, ''
        offset, layers = 0, {}

        def take(shape: tuple[int, ...], dtype: type) -> np.ndarray:
            nonlocal offset
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize // 4
            array = host[offset : offset + count].view(dtype).reshape(shape)
            offset += count
            return array

        for name, (_, _, histogram, _, _) in self.layers.items():
            channels, m = histogram.shape[0], len(self.sample_ids)
            tops = []
            for _ in range(2):
                values, images = take((channels, self.k), np.float32), take((channels, self.k), np.int32)
                ys, xs = take((channels, self.k), np.int32), take((channels, self.k), np.int32)
                tops.append(TopK(values, names[images], ys, xs))
            counts = take((channels, HIST_BINS), np.int64)
            sampled = [take((m, channels), np.float32 if i % 3 == 0 else np.int32) for i in range(6)]
            fired = take((channels,), np.int64)
            layers[name] = LayerScan(*tops, counts, *sampled, fired=fired, images=len(self.ids))
        return PartialScan(self.k, self.sample_size, layers, self.sample_ids, self.sample_priority, {})
