"""The notebook API: one call renders a channel, one call finds a layer's dataset examples.

    import atlas
    atlas.visualize("efficientnet-lite0", "_blocks.9:5")            # shows in Jupyter
    atlas.visualize(model, "_blocks.9:5 - 0.5*_blocks.9:7", steps=128).images[0].save("x.png")
    atlas.examples(model, "_blocks.9", "photos/", channels=[5]).top(5)

Models are a registry name (as in a job spec), a ``LoadedModel``, or any ``nn.Module`` as it
is: that one is copied and then frozen like ``load_model`` freezes (eval, no parameter
gradients, BatchNorm folded), so the caller's module keeps its mode and its ``requires_grad``.
Every other setting defaults to what ``atlas render`` uses (``OneOffRequest``). Results display
in Jupyter (``_repr_png_`` / ``_repr_html_``) and hold PIL images and activations.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import difflib
import functools
import html
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image
from torch import nn
from tqdm import tqdm

from atlas.core.errors import AtlasError
from atlas.data.open import open_source
from atlas.data.source import ImageListSource, ImageSource
from atlas.kinds.examples import finalize_layer, scan_shard
from atlas.models import LOGITS, LoadedModel, freeze, load_model, pick_device
from atlas.models.loaded import LayerInfo
from atlas.models.registry import declared_input
from atlas.optvis import named
from atlas.optvis import objectives as obj
from atlas.optvis.oneoff import OneOffRequest, render_target
from atlas.optvis.recipes import to_uint8

ModelLike = str | LoadedModel | nn.Module
ImagesLike = str | Path | Sequence[Image.Image | str | Path]
# Channels shown when a result with many channels is displayed; the data holds them all.
SHOWN_CHANNELS = 16


# One term of an objective string: an optional sign, an optional "weight *", then a target.
class ApiError(AtlasError, ValueError):
    """A call of the notebook API that cannot work as written; the message shows the fix."""


def parse_objective(text: str) -> obj.Objective:
    """A lucent-style objective string: weighted sums of targets, e.g. ``2*_blocks.9:5 - _blocks.9:7``."""
    try:
        return named.parse_objective(text)
    except obj.ObjectiveError as err:
        raise ApiError(str(err)) from None


@functools.lru_cache(maxsize=4)
def _registry_model(name: str, device: str) -> LoadedModel:
    """Notebooks call again and again: keep the last few registry models loaded."""
    return load_model(name, device=device)


def as_model(model: ModelLike, device: str = "auto", input_size: int | None = None) -> LoadedModel:
    """A registry name, a LoadedModel, or a copy of an nn.Module frozen as ``load_model`` freezes."""
    where = str(pick_device(device))
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return _registry_model(model, where)
    if isinstance(model, nn.Module):
        preprocessing = declared_input(model, input_size)
        return freeze(type(model).__name__, copy.deepcopy(model), preprocessing, where)
    raise ApiError(
        f"model must be a registry name, a LoadedModel or a torch.nn.Module, not {type(model).__name__}"
    )


def _options(options: dict) -> dict:
    known = {f.name for f in dataclasses.fields(OneOffRequest)} - {"layer", "channel", "objective"}
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = (
                f"; did you mean {', '.join(close)}?" if close else f"; options: {', '.join(sorted(known))}"
            )
            raise ApiError(f"visualize() has no option {name!r}{hint}")
    return options


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _img_tag(image: Image.Image, title: str) -> str:
    data = base64.b64encode(_png(image)).decode()
    return f'<img src="data:image/png;base64,{data}" title="{html.escape(title)}" style="margin:1px">'


def _strip(images: Sequence[Image.Image]) -> Image.Image:
    """Images side by side (heights may differ: the tallest sets the strip's height)."""
    width = sum(i.width for i in images)
    strip = Image.new("RGB", (width, max(i.height for i in images)), (255, 255, 255))
    left = 0
    for image in images:
        strip.paste(image, (left, 0))
        left += image.width
    return strip


@dataclass(frozen=True)
class Visualization:
    """Images optimized for one objective; displays itself in Jupyter."""

    objective: str
    images: list[Image.Image] = field(repr=False)
    # For each final image, without transforms: the objective's value, or for a single
    # "negative:layer:channel" target the channel's activation (which it drives down).
    activations: list[float]
    loss: list[float] = field(repr=False)  # minus the objective at each step, averaged over the images

    @property
    def activation(self) -> float:
        """The objective's value on the final image (the mean over images of a set)."""
        return float(np.mean(self.activations))

    def save(self, path: str | Path) -> Path:
        """All images side by side in one PNG."""
        path = Path(path)
        _strip(self.images).save(path)
        return path

    def _repr_png_(self) -> bytes:
        return _png(_strip(self.images))

    def _repr_html_(self) -> str:
        tags = "".join(
            _img_tag(image, f"{value:.3g}")
            for image, value in zip(self.images, self.activations, strict=True)
        )
        caption = html.escape(f"{self.objective}: {', '.join(f'{v:.3g}' for v in self.activations)}")
        return f"<figure style='margin:0'>{tags}<figcaption>{caption}</figcaption></figure>"


def layers(model: ModelLike, input_size: int | None = None) -> list[LayerInfo]:
    """A model's layers, as `atlas layers` lists them: name, channels (feature dims), layout and
    grid at its input size, and each transformer block's role; for any model `visualize` takes."""
    return as_model(model, device="cpu", input_size=input_size).layers()


def visualize(
    model: ModelLike,
    objective: str | obj.Objective,
    *,
    diversity: bool = False,
    device: str = "auto",
    input_size: int | None = None,
    **options: object,
) -> Visualization:
    """Optimize images for ``objective`` on ``model`` with `atlas render`'s defaults.

    ``objective`` is a string (``"_blocks.9:5"``, ``"_blocks.9:5 - _blocks.9:7"``,
    ``"2*_blocks.9:5"``, ``"neuron:_blocks.9:5"``, ``"deepdream:_blocks.9"``, ``"logit:42"``) or
    an ``atlas.optvis.objectives`` object. ``diversity=True`` adds the Gram-matrix diversity
    term over the ``count`` images. Options are ``OneOffRequest``'s: steps, size, count, param,
    decorrelate, transforms, lr, penalties, seed, precision, ...
    """
    loaded = as_model(model, device, input_size)
    target = parse_objective(objective) if isinstance(objective, str) else objective
    layers = sorted(target.layers)
    if not layers:
        raise ApiError(f"objective {target.name!r} reads no layer; name one, e.g. '_blocks.9:5'")
    request = OneOffRequest(layer=layers[0], **_options(options))  # type: ignore[arg-type]
    if diversity:
        if request.count < 2:
            raise ApiError("diversity needs a set of images: pass count=4 (or any number >= 2)")
        layer = next((name for name in layers if name != LOGITS), layers[0])
        target = target + request.diversity_weight * obj.diversity(layer)
    result, values = render_target(loaded, request, target)
    if isinstance(objective, str) and named.reports_negated(objective):
        values = [-v for v in values]  # "negative:L:c" minimizes the channel: report the channel
    images = [Image.fromarray(array) for array in to_uint8(result.images)]
    name = objective if isinstance(objective, str) else target.name
    return Visualization(name, images, values, result.loss.mean(dim=1).tolist())


@dataclass(frozen=True)
class Example:
    """One dataset example: where the channel fired (or was lowest) on which image."""

    source_id: str
    activation: float
    x: int
    y: int
    crop: Image.Image
    thumb: Image.Image


@dataclass(frozen=True)
class Examples:
    """Dataset examples of one layer's channels: top and bottom k, with receptive-field crops."""

    layer: str
    table: pa.Table  # the `examples` table of docs/STORE.md
    histograms: pa.Table  # the `histogram` table

    def __repr__(self) -> str:
        k = max(self.table.column("rank").to_pylist(), default=-1) + 1
        return f"Examples(layer={self.layer!r}, channels={len(self.channels)}, k={k})"

    @property
    def channels(self) -> list[int]:
        return sorted(set(self.histograms.column("channel").to_pylist()))

    def get(self, channel: int, bucket: str = "max") -> list[Example]:
        """One bucket (max, min, slightly_positive, slightly_negative) of a channel, by rank."""
        if channel not in self.channels:
            raise ApiError(f"channel {channel} was not scanned; scanned: {self.channels}")
        rows = [
            row for row in self.table.to_pylist() if row["channel"] == channel and row["bucket"] == bucket
        ]
        return [
            Example(
                r["source_id"],
                r["activation"],
                r["x"],
                r["y"],
                Image.open(io.BytesIO(r["crop"])),
                Image.open(io.BytesIO(r["thumb"])),
            )
            for r in sorted(rows, key=lambda r: r["rank"])
        ]

    def top(self, channel: int) -> list[Example]:
        """The images on which the channel's activation peaks highest, highest first."""
        return self.get(channel, "max")

    def bottom(self, channel: int) -> list[Example]:
        """The images on which the channel's activation goes lowest, lowest first."""
        return self.get(channel, "min")

    def _shown(self) -> list[int]:
        return self.channels[:SHOWN_CHANNELS]

    def _repr_png_(self) -> bytes:
        """One row per channel: its top crops, a gap, its bottom crops."""
        rows = []
        for channel in self._shown():
            crops = [e.crop for e in self.top(channel)] + [Image.new("RGB", (8, 8), "white")]
            rows.append(_strip(crops + [e.crop for e in self.bottom(channel)]))
        width = max(r.width for r in rows)
        grid = Image.new("RGB", (width, sum(r.height for r in rows)), (255, 255, 255))
        top = 0
        for row in rows:
            grid.paste(row, (0, top))
            top += row.height
        return _png(grid)

    def _repr_html_(self) -> str:
        lines = []
        for channel in self._shown():
            cells = []
            for label, examples in (("top", self.top(channel)), ("bottom", self.bottom(channel))):
                tags = "".join(_img_tag(e.crop, f"{e.source_id}: {e.activation:.3g}") for e in examples)
                cells.append(f"<td><small>{label}</small><br>{tags}</td>")
            lines.append(f"<tr><th>{html.escape(self.layer)}:{channel}</th>{''.join(cells)}</tr>")
        more = len(self.channels) - len(self._shown())
        note = f"<caption>{more} more channels: .top(c) / .bottom(c)</caption>" if more > 0 else ""
        return f"<table>{note}{''.join(lines)}</table>"


def _source(images: ImagesLike) -> ImageSource:
    if isinstance(images, str | Path):
        return open_source(images)
    return ImageListSource(list(images))


def examples(
    model: ModelLike,
    layer: str,
    images: ImagesLike,
    *,
    channels: Sequence[int] | None = None,
    k: int = 8,
    batch_size: int = 32,
    crop_size: int = 96,
    thumb_size: int = 64,
    device: str = "auto",
    input_size: int | None = None,
    progress: bool = True,
) -> Examples:
    """Scan ``images`` (a folder, a .parquet file, "demo", or a list of PIL images / paths) with
    ``model`` and keep, per channel of ``layer``, the ``k`` images that excite it most and least,
    with crops of the receptive field around the strongest position. No job spec, no store.
    ``progress`` shows a bar of the images scanned, then of the crops cut.
    """
    loaded = as_model(model, device, input_size)
    name = loaded.resolve_layer(layer)
    source = _source(images)
    (shard,) = source.shards(max(1, len(source)))
    bar = tqdm(total=len(source), unit="image", desc="scan", disable=not progress, file=sys.stderr)
    with bar:
        partial = scan_shard(
            loaded,
            [name],
            source,
            shard,
            k=k,
            batch_size=batch_size,
            on_batch=lambda ids, _: bar.update(len(ids)),
        )
        bar.set_postfix_str("cutting crops")
        table, histograms = finalize_layer(
            loaded,
            name,
            partial,
            source,
            crop_size=crop_size,
            thumb_size=thumb_size,
            unit_key="notebook",
            channels=list(channels) if channels is not None else None,
        )
    return Examples(name, table, histograms)


scan = examples
