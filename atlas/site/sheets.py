"""Tile small PNGs into one JPEG sheet, so a layer page makes a handful of image requests per channel.

A 1,024-channel layer with ten examples per bucket would otherwise need tens of thousands of
files and `<img>` tags; one sheet per (channel, group) keeps the HTML and the file count small.
Sheets hold photos and photo-like optimized images, so they are JPEG: encoding one is about
twenty times faster than PNG and the file is about a quarter of the size, which is what keeps
an InceptionV1-sized site build within minutes.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHEET_BACKGROUND = (255, 255, 255)
SHEET_QUALITY = 90


@dataclass(frozen=True)
class Sheet:
    """A composed grid of equally sized cells, encoded as JPEG."""

    jpeg: bytes
    width: int
    height: int
    columns: int
    rows: int


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header, without decoding the pixels."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError(
            "image bytes are not a PNG (the store's image columns must hold PNG files)"
        )
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def grid_columns(count: int) -> int:
    """Columns for `count` cells: one row up to four, then a wide grid about 2.5 times wider than tall."""
    if count <= 4:
        return max(count, 1)
    rows = max(1, round(math.sqrt(count / 2.5)))
    return math.ceil(count / rows)


def _decode_rgb(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=("PNG",))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def compose_sheet(pngs: Sequence[bytes], columns: int | None = None) -> Sheet:
    """Paste PNGs into a grid; cells take the first image's size and others are resized to fit."""
    if not pngs:
        raise ValueError("compose_sheet needs at least one image")
    columns = columns or grid_columns(len(pngs))
    rows = math.ceil(len(pngs) / columns)
    cells = [_decode_rgb(data) for data in pngs]
    cell_w, cell_h = cells[0].size
    sheet = Image.new("RGB", (cell_w * columns, cell_h * rows), SHEET_BACKGROUND)
    for index, cell in enumerate(cells):
        if cell.size != (cell_w, cell_h):
            cell = cell.resize((cell_w, cell_h), Image.Resampling.BILINEAR)
        sheet.paste(cell, ((index % columns) * cell_w, (index // columns) * cell_h))
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=SHEET_QUALITY, subsampling=0)  # 4:4:4 keeps small crops crisp
    return Sheet(buffer.getvalue(), sheet.width, sheet.height, columns, rows)


def sheet_layout(pngs: Sequence[bytes], columns: int | None = None) -> tuple[int, int, int, int]:
    """(width, height, columns, rows) of the sheet `compose_sheet` will make, from headers only."""
    if not pngs:
        raise ValueError("a sheet needs at least one image")
    columns = columns or grid_columns(len(pngs))
    rows = math.ceil(len(pngs) / columns)
    cell_w, cell_h = png_size(pngs[0])
    return cell_w * columns, cell_h * rows, columns, rows


def write_sheets(jobs: Sequence[tuple[Path, Sequence[bytes], int]]) -> None:
    """Compose and write a batch of (path, pngs, columns) sheets; runs in a worker process."""
    for path, pngs, columns in jobs:
        path.write_bytes(compose_sheet(pngs, columns).jpeg)

