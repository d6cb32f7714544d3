"""How a scan turns a batch of source ids into model inputs: a `Decoder`.

Two decoders give the same model inputs (the centered square, resized with antialiasing):

- `decode_for_model` (`atlas.data.source`): PIL on the CPU, one image at a time. JPEGs decode straight
  at a reduced DCT scale (PIL's draft), so large photos cost little.
- `TensorDecoder`: JPEGs decoded in one batched `torchvision.io.decode_jpeg` call (nvJPEG on a
  CUDA device, libjpeg-turbo on the CPU), then PIL's draft scale (a box average), the crop and an
  antialiased bilinear resize as tensor operations on that device. Everything else falls back
  to PIL image by image, so skip reasons and conversions are exactly PIL's: other formats,
  CMYK and EXIF-rotated JPEGs, files whose last bytes are not the JPEG end marker (truncated
  ones among them), images PIL would skip or downscale, and anything the batched decode rejects.

The two agree to about one grey level on photos: mean absolute difference under 1.5 of 255 per
pixel, rare edge pixels up to a few tens (`tests/test_decode.py` checks it on many sizes and
modes); nvJPEG adds its own IDCT rounding on a GPU. Where PIL's draft scale applies (a short side
of at least twice the model's input) the box average stands in for libjpeg's scaled IDCT, which
differs more on pixel noise (measured 5-7 levels mean on uniform noise at scale 2).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.data.source import (
    EXIF_ORIENTATION,
    MAX_SIDE,
    MIN_SIDE,
    Decoded,
    ImageSource,
    Raw,
    SkippedInput,
    decode_for_model,
    decode_raw,
    model_view,
    skipped_input,
)

# ids of the good images, their pixels as uint8 [B, size, size, 3] (None when none is good),
# counts of skipped/converted images by reason, and the skipped images themselves.
Batch = tuple[list[str], np.ndarray | torch.Tensor | None, Counter[str], list[SkippedInput]]
JPEG_END = b"\xff\xd9"


class Decoder(Protocol):
    def __call__(self, source: ImageSource, source_ids: Sequence[str], size: int) -> Batch: ...


def jpeg_plan(data: bytes, size: int) -> tuple[int, list[str]] | None:
    """(PIL's draft scale, conversion reasons) when `data` is a JPEG the tensor path decodes to
    what PIL would give; None when PIL must decide (read from the header only, nothing decoded)."""
    if not data.endswith(JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return None
            width = image.size[0]
            drafted = image.draft("RGB", (size, size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None
    if drafted is None or min(image.size) < MIN_SIDE or max(image.size) > MAX_SIDE:
        return None
    if min(image.size) // (2 * size) > 1:  # PIL would box-reduce before resizing (reducing_gap)
        return None
    scale = round(width / drafted[1][2])
    return scale, [] if image.mode == "RGB" else ["converted:grayscale"]


def tensor_view(images: torch.Tensor, scale: int, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] full-size decodes of same-size JPEGs -> uint8 [B, size, size, 3]: PIL's
    draft scale as a box average, the centered square, an antialiased bilinear resize."""
    x = images.float()
    if scale > 1:
        x = F.avg_pool2d(x, scale, scale, ceil_mode=True)
    height, width = x.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    x = x[:, :, top : top + side, left : left + side]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class TensorDecoder:
    """Batched JPEG decoding on `device` (see the module docstring); PIL for everything else.

    On CUDA the work runs on a stream of its own, so a scan can decode the next batch while the
    model runs this one; the batch is complete on the device when the call returns.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def __call__(self, source: ImageSource, source_ids: Sequence[str], size: int) -> Batch:
        raw_items = source.raw_many(source_ids)
        if raw_items is None:
            return decode_for_model(source, source_ids, size)
        # PIL's outcome, or the conversions of a JPEG the tensor path decodes (image None).
        decoded: list[tuple[str, Decoded]] = []
        jpegs: list[tuple[int, bytes, int]] = []  # (position, bytes, draft scale)
        originals: dict[int, Raw] = {}  # what PIL decodes if the tensor path cannot after all
        for source_id, raw in raw_items:
            data = _bytes(raw)
            plan = jpeg_plan(data, size) if data is not None else None
            if plan is None:  # PIL reads the original, so its messages name the file as before
                decoded.append((source_id, decode_raw(raw, size)))
                continue
            scale, reasons = plan
            jpegs.append((len(decoded), data, scale))
            originals[len(decoded)] = raw
            decoded.append((source_id, Decoded(None, reasons)))
        with torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext():
            views = self._views(jpegs, size)
            for position, raw in originals.items():
                if position not in views:  # the batched decode rejected it: PIL decides
                    decoded[position] = (decoded[position][0], decode_raw(raw, size))
            ids, pixels, counts, skipped = [], [], Counter(), []
            for position, (source_id, outcome) in enumerate(decoded):
                counts.update(outcome.reasons)
                if position in views:
                    pixels.append(views[position])
                elif outcome.image is not None:
                    view = np.array(model_view(outcome.image, size))
                    pixels.append(torch.from_numpy(view).to(self.device, non_blocking=True))
                else:
                    skipped.append(skipped_input(source_id, outcome))
                    continue
                ids.append(source_id)
            batch = torch.stack(pixels) if pixels else None
        if self.stream is not None:
            self.stream.synchronize()
        return ids, batch, counts, skipped

    def _views(self, jpegs: list[tuple[int, bytes, int]], size: int) -> dict[int, torch.Tensor]:
        """Model views of the JPEGs by position; those the decoder rejects are left out."""
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for _, data, _ in jpegs]
        images = _decode_jpegs(tensors, self.device)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if image is not None:
                groups.setdefault((*image.shape, jpegs[index][2]), []).append(index)
        views: dict[int, torch.Tensor] = {}
        for (*_, scale), members in groups.items():  # same-size photos resize as one batch
            resized = tensor_view(torch.stack([images[i] for i in members]), scale, size)
            views.update({jpegs[i][0]: view for i, view in zip(members, resized, strict=True)})
        return views


def _decode_jpegs(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """One batched decode to RGB; when it fails, one call per image (None where that fails)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not tensors:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: for TorchCodec
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            results: list[torch.Tensor | None] = []
            for tensor in tensors:
                try:
                    results.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    results.append(None)
            return results


def _bytes(raw: object) -> bytes | None:
    """The encoded bytes of a `raw_many` item; None for a missing, unreadable or decided one."""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, Path):
        try:
            return raw.read_bytes()
        except OSError:
            return None
    return None


def scan_decoder(device: torch.device) -> Decoder:
    """The decoder a scan on `device` uses: batched JPEG decoding on a GPU, PIL on the CPU (where
    torch's threads already keep the cores busy with the forward pass)."""
    return TensorDecoder(device) if device.type == "cuda" else decode_for_model
