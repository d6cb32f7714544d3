"""Image sources for dataset examples: a folder of images, a Parquet column of image bytes, or
the demo photos that scikit-image and scikit-learn install.

Every image has a stable *source id* (a string), so partial scans computed on different machines
can name the same image, and the final crops can be cut from it again later. Sources are small
picklable descriptions: a Ray worker receives the source and a `ShardRef` and decodes the images
itself. Decoding never raises on bad data: unreadable images are skipped and converted ones
(grayscale, CMYK, alpha, palette, huge) are fixed, and both are counted by reason.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import io
import math
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from atlas.core.errors import AtlasError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_SIDE = 16  # smaller images carry too little to be an example of anything
MAX_SIDE = 2048  # larger images are downscaled on load; crops never need more
DEMO_SCALES = (1.0, 0.6, 0.35)  # crop sides as fractions of a photo's short side
# Drawings and test patterns in skimage/data that are not photos of the world.
DEMO_EXCLUDED = frozenset(
    {"chessboard_GRAY.png", "chessboard_RGB.png", "color.png", "logo.png", "phantom.png"}
)
EXIF_ORIENTATION = 0x0112
DEMO_SCHEME = "demo-v1"  # bump when the crop scheme changes, so fingerprints change with it


class SourceError(AtlasError, ValueError):
    """A dataset source that cannot be used (missing, empty, no image column...)."""


@dataclass(frozen=True)
class ShardRef:
    """A slice of a source: what the driver ships to a worker (ids only, never pixels)."""

    index: int
    source_ids: tuple[str, ...]


@dataclass
class Decoded:
    """Outcome of decoding one image: the RGB image or None, and why it was changed or skipped."""

    image: Image.Image | None
    reasons: list[str] = field(default_factory=list)
    message: str = ""  # why a skipped image could not be used, in the decoder's words


@dataclass(frozen=True)
class SkippedInput:
    """An image the scan could not use: its source id, the reason (`corrupt`, ...) and details."""

    source_id: str
    reason: str
    message: str


def decode_image(
    raw: bytes | Path, draft_size: int | None = None, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE
) -> Decoded:
    """Decode bytes or a file to RGB; never raises on bad data.

    `draft_size` lets JPEG decode straight at a reduced scale (the scan only needs the model's
    input size). Reasons are `skipped:<why>` (the image is None) or `converted:<what>`.
    """
    reasons: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return Decoded(None, ["skipped:too_large"], str(err))
    except FileNotFoundError as err:
        return Decoded(None, ["skipped:missing"], str(err))
    except OSError as err:
        reason = "skipped:truncated" if "truncated" in str(err) else "skipped:corrupt"
        return Decoded(None, [reason], str(err))
    except (ValueError, SyntaxError, Image.UnidentifiedImageError) as err:
        return Decoded(None, ["skipped:corrupt"], str(err))
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # phone photos: upright, as people saw them
        image = ImageOps.exif_transpose(image)
        reasons.append("converted:rotated")
    if min(image.size) < min_side:
        width, height = image.size
        return Decoded(
            None, ["skipped:tiny"], f"{width}x{height} pixels, under the {min_side} px minimum side"
        )
    if image.mode != "RGB":
        image, reason = _to_rgb(image)
        reasons.append(reason)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        reasons.append("converted:downscaled")
    return Decoded(image, reasons)


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """Convert any PIL mode to RGB; transparent pixels become mid gray (no colour of their own)."""
    mode = image.mode
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        if not has_alpha:
            return image, "converted:palette"
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), "converted:alpha"
    if mode == "CMYK":
        return image.convert("RGB"), "converted:cmyk"
    if mode in ("1", "L"):
        return image.convert("RGB"), "converted:grayscale"
    if mode.startswith("I") or mode == "F":  # 16/32-bit grayscale: rescale to 8 bits first
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low or 1.0) * 255.0
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB"), "converted:grayscale"
    return image.convert("RGB"), f"converted:{mode.lower()}"


def square_view(image: Image.Image) -> tuple[int, int, int]:
    """The centered square (left, top, side) of an image: the part the model sees."""
    width, height = image.size
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def view_crop(
    image: Image.Image, box: tuple[float, float, float, float], input_size: int, size: int
) -> Image.Image:
    """The part of the original photo under `box` (pixels of the model's `input_size` view),
    resized to `size` x `size`: crops keep the photo's resolution, not the model's."""
    left, top, side = square_view(image)
    scale = side / input_size
    crop = (left + box[0] * scale, top + box[1] * scale, left + box[2] * scale, top + box[3] * scale)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=crop)


def png(image: Image.Image) -> bytes:
    """PNG at zlib level 3: measured 3.5x faster to write than the default 6 for 8% more bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def model_view(image: Image.Image, size: int) -> Image.Image:
    """Center square of `image` resized to `size` x `size`: the model's preprocessing."""
    left, top, side = square_view(image)
    return image.resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=2.0
    )


def decode_for_model(
    source: ImageSource, source_ids: Sequence[str], size: int
) -> tuple[list[str], np.ndarray | None, Counter[str], list[SkippedInput]]:
    """What a scan feeds a model: the good images of `source_ids` as one uint8 [B, size, size, 3]
    array (None when none is good) with their ids, counts of skipped/converted images by reason,
    and the skipped images themselves.
    """
    skipped: list[SkippedInput] = []
    good, counts = source.load_batch(source_ids, draft_size=size, skipped=skipped)
    if not good:
        return [], None, counts, skipped
    pixels = np.stack([np.asarray(model_view(image, size)) for _, image in good])
    return [source_id for source_id, _ in good], pixels, counts, skipped


class ImageSource(ABC):
    """Ordered images addressed by source id; subclasses list the ids and decode them."""

    description: str

    @abstractmethod
    def ids(self) -> list[str]:
        """Every source id, in a stable order."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Content hash of the ids and what they point at, for content keys."""

    @abstractmethod
    def load_many(
        self, source_ids: Sequence[str], draft_size: int | None = None
    ) -> Iterator[tuple[str, Decoded]]:
        """Decode each id, in whatever order is cheapest for the source (callers key by id).

        Bad images come back with image None and the reason.
        """

    def __len__(self) -> int:
        return len(self.ids())

    def shards(self, shard_size: int) -> list[ShardRef]:
        """Consecutive slices of `shard_size` ids, in source order."""
        if shard_size < 1:
            raise SourceError(f"shard_size must be at least 1, got {shard_size}")
        ids = self.ids()
        return [
            ShardRef(i, tuple(ids[start : start + shard_size]))
            for i, start in enumerate(range(0, len(ids), shard_size))
        ]

    def load(self, source_id: str) -> Image.Image:
        """One RGB image; raises SourceError when it cannot be decoded."""
        for _, decoded in self.load_many([source_id]):
            if decoded.image is None:
                raise SourceError(
                    f"{self.description}: cannot load {source_id!r} ({', '.join(decoded.reasons)})"
                )
            return decoded.image
        raise SourceError(f"{self.description}: unknown source id {source_id!r}")

    def load_batch(
        self,
        source_ids: Sequence[str],
        draft_size: int | None = None,
        skipped: list[SkippedInput] | None = None,
    ) -> tuple[list[tuple[str, Image.Image]], Counter[str]]:
        """Good images with their ids, and counts of skipped/converted images by reason.

        Each skipped image is also appended to `skipped` when given, for the store's report.
        """
        good: list[tuple[str, Image.Image]] = []
        counts: Counter[str] = Counter()
        for source_id, decoded in self.load_many(source_ids, draft_size):
            counts.update(decoded.reasons)
            if decoded.image is not None:
                good.append((source_id, decoded.image))
            elif skipped is not None:
                skipped.append(skipped_input(source_id, decoded))
        return good, counts

    def raw_many(self, source_ids: Sequence[str]) -> Iterator[tuple[str, Raw]] | None:
        """Each id's encoded bytes (or file), undecoded, in `load_many`'s order, for decoders of
        their own (`atlas.kinds.examples.decode`); None when the source holds no encoded images."""
        return None


def skipped_input(source_id: str, decoded: Decoded) -> SkippedInput:
    """The record of an image that decoded to nothing, for the store's `skipped` table."""
    reason = decoded.reasons[0].removeprefix("skipped:") if decoded.reasons else "unknown"
    return SkippedInput(source_id, reason, decoded.message)


# What a source holds for one id: encoded bytes, a file, or why there is nothing (None: missing).
Raw = bytes | Path | Decoded | None


def decode_raw(raw: Raw, draft_size: int | None) -> Decoded:
    """`decode_image` of one `raw_many` item; a missing one is skipped as missing."""
    if raw is None:
        return Decoded(None, ["skipped:missing"], "gone since the source was listed")
    if isinstance(raw, Decoded):
        return raw
    return decode_image(raw, draft_size)


def _decode_all(
    raw_items: Iterable[tuple[str, Raw]], draft_size: int | None
) -> Iterator[tuple[str, Decoded]]:
    for source_id, raw in raw_items:
        yield source_id, decode_raw(raw, draft_size)


def _hash_lines(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass
class FolderSource(ImageSource):
    """Every image file below a folder (recursive); ids are POSIX paths relative to it."""

    root: Path

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"folder {self.root}"

    @cached_property
    def _ids(self) -> list[str]:
        found = [
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.suffix.lower() in IMAGE_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(self.root).parts)
        ]
        return sorted(found)

    def ids(self) -> list[str]:
        return list(self._ids)

    def fingerprint(self) -> str:
        def line(source_id: str) -> str:
            stat = (self.root / source_id).stat()
            return f"{source_id}\t{stat.st_size}\t{stat.st_mtime_ns}"

        return _hash_lines(line(i) for i in self._ids)

    def load_many(
        self, source_ids: Sequence[str], draft_size: int | None = None
    ) -> Iterator[tuple[str, Decoded]]:
        return _decode_all(self.raw_many(source_ids), draft_size)

    def raw_many(self, source_ids: Sequence[str]) -> Iterator[tuple[str, Raw]]:
        paths = ((i, self.root / i) for i in source_ids)
        return ((i, path if path.is_file() else None) for i, path in paths)


@dataclass
class ParquetSource(ImageSource):
    """One image per row of a Parquet file; ids are `<file name>#row<i>`, or with a label column
    `<label>/<file name>#row<i>`, the ImageFolder form that label enrichment reads
    (atlas.site.labels; a `/` inside a label becomes `_`, a null or empty label is `(none)`,
    UNLABELLED, which enrichment counts in the dataset but never reports)."""

    path: Path
    column: str
    label_column: str | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"parquet {self.path} column {self.column!r}"

    @cached_property
    def _num_rows(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    def ids(self) -> list[str]:
        rows = [f"{self.path.name}#row{i}" for i in range(self._num_rows)]
        if self.label_column is None:
            return rows
        labels = pq.read_table(self.path, columns=[self.label_column]).column(0).to_pylist()
        return [f"{row_label(label)}/{row}" for label, row in zip(labels, rows, strict=True)]

    def fingerprint(self) -> str:
        stat = self.path.stat()
        labelled = [] if self.label_column is None else [f"labels:{self.label_column}"]  # other ids
        return _hash_lines([self.path.name, self.column, str(stat.st_size), str(stat.st_mtime_ns), *labelled])

    def _row(self, source_id: str) -> int | None:
        prefix = f"{self.path.name}#row"
        if self.label_column is not None:
            source_id = source_id.rpartition("/")[2]
        if not source_id.startswith(prefix) or not source_id[len(prefix) :].isdigit():
            return None
        row = int(source_id[len(prefix) :])
        return row if row < self._num_rows else None

    def load_many(
        self, source_ids: Sequence[str], draft_size: int | None = None
    ) -> Iterator[tuple[str, Decoded]]:
        return _decode_all(self.raw_many(source_ids), draft_size)

    def raw_many(self, source_ids: Sequence[str]) -> Iterator[tuple[str, Raw]]:
        """Rows in file order, so each needed row group is read once whatever order was asked."""
        parquet = pq.ParquetFile(self.path)
        starts = [0]
        for group in range(parquet.num_row_groups):
            starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
        located = []
        for source_id in source_ids:
            row = self._row(source_id)
            if row is None:
                yield source_id, None
            else:
                located.append((row, source_id))
        cached_group, cached_column = -1, None
        for row, source_id in sorted(located):
            group = bisect.bisect_right(starts, row) - 1
            if group != cached_group:
                cached_group = group
                cached_column = _image_bytes(parquet.read_row_group(group, columns=[self.column]).column(0))
            value = cached_column[row - starts[group]].as_py()
            yield source_id, value if isinstance(value, bytes) and value else None


# The label part of the id of a row whose label is missing (null or empty text). Label enrichment
# (atlas.site.labels) counts such rows in the dataset but never reports `(none)` as a label.
UNLABELLED = "(none)"


def row_label(value: object) -> str:
    """A label column's value as the label part of an id: text (an integer as its digits) with
    each `/` made `_`; a missing or empty value is UNLABELLED (`(none)`)."""
    return UNLABELLED if value is None or value == "" else str(value).replace("/", "_")


def check_label_column(where: str, schema: pa.Schema, label_column: str) -> None:
    """Raise SourceError unless `schema` (of the Parquet file `where`) has `label_column` holding
    text or integers (dictionary-encoded too; an all-null column is every row unlabelled)."""
    if label_column not in schema.names:
        raise SourceError(
            f"{where} has no label column {label_column!r}; columns: {', '.join(schema.names)}. "
            "Set examples.label_column to the column of labels"
        )
    kind = schema.field(label_column).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    if pa.types.is_string(value) or pa.types.is_large_string(value) or is_view(value):
        return
    if pa.types.is_integer(value) or pa.types.is_null(value):
        return
    hint = (
        " (pandas stores integer labels with missing values as floats: cast the column to Int64 or to text)"
        if pa.types.is_floating(value)
        else ""
    )
    raise SourceError(
        f"label column {label_column!r} of {where} is {kind}, not text or integers{hint}; "
        "set examples.label_column to a column of class names or class numbers"
    )


def _image_bytes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The bytes of an image column: plain binary, or the `bytes` field of a struct (Hugging Face)."""
    if pa.types.is_struct(column.type):
        return pa.chunked_array(
            [chunk.field("bytes") for chunk in column.chunks], column.type.field("bytes").type
        )
    return column


def _is_image_column(field_: pa.Field) -> bool:
    kind = field_.type
    if pa.types.is_struct(kind):
        return any(f.name == "bytes" and _is_binary(f.type) for f in kind)
    return _is_binary(kind)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


@lru_cache(maxsize=4)
def _demo_photo(path: str) -> Decoded:
    """Decoded demo photos are reused by their many crops (a shard holds consecutive crops)."""
    return decode_image(Path(path))


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (importing scikit-learn takes a second)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SourceError(f"the demo photos need {name!r} installed: pip install scikit-image scikit-learn")
    return Path(spec.origin).parent


def demo_photos() -> list[Path]:
    """The photos installed with scikit-image and scikit-learn, in a fixed order."""
    folders = [_package_dir("skimage") / "data", _package_dir("sklearn") / "datasets" / "images"]
    photos = [
        path
        for folder in folders
        for path in sorted(folder.glob("*"))
        if path.suffix.lower() in (".png", ".jpg") and path.name not in DEMO_EXCLUDED
    ]
    return photos


def demo_crop_boxes(width: int, height: int) -> list[tuple[int, int, int]]:
    """Square crops (left, top, side) at several scales, evenly tiling the photo at each scale."""
    boxes = []
    short = min(width, height)
    for scale in DEMO_SCALES:
        side = max(MIN_SIDE, round(short * scale))
        across, down = math.ceil(width / side - 1e-9), math.ceil(height / side - 1e-9)
        for row in range(down):
            for col in range(across):
                left = round(col * (width - side) / (across - 1)) if across > 1 else (width - side) // 2
                top = round(row * (height - side) / (down - 1)) if down > 1 else (height - side) // 2
                boxes.append((left, top, side))
    return boxes


@dataclass
class DemoSource(ImageSource):
    """Square crops at several scales of the photos installed with scikit-image and scikit-learn.

    Ids look like `demo:astronaut.png@256x256+128+0` (side x side + left + top), so an id alone
    says which pixels it is. Nothing is copied: the photos are read from the package folders.
    """

    description: str = "demo photos"

    @cached_property
    def _photos(self) -> dict[str, Path]:
        return {path.name: path for path in demo_photos()}

    @cached_property
    def _ids(self) -> list[str]:
        ids = []
        for name, path in self._photos.items():
            with Image.open(path) as image:
                width, height = image.size
            ids.extend(
                f"demo:{name}@{side}x{side}+{left}+{top}"
                for left, top, side in demo_crop_boxes(width, height)
            )
        return ids

    def ids(self) -> list[str]:
        return list(self._ids)

    def fingerprint(self) -> str:
        sizes = [f"{name}\t{path.stat().st_size}" for name, path in self._photos.items()]
        return _hash_lines([DEMO_SCHEME, *sizes, *self._ids])

    def _parse(self, source_id: str) -> tuple[Path, tuple[int, int, int]] | None:
        if not source_id.startswith("demo:") or "@" not in source_id:
            return None
        name, _, geometry = source_id[len("demo:") :].rpartition("@")
        try:
            size, left, top = geometry.split("+")
            side = int(size.split("x")[0])
            return self._photos[name], (int(left), int(top), side)
        except (KeyError, ValueError):
            return None

    def load_many(
        self, source_ids: Sequence[str], draft_size: int | None = None
    ) -> Iterator[tuple[str, Decoded]]:
        for source_id in source_ids:
            parsed = self._parse(source_id)
            if parsed is None:
                yield source_id, Decoded(None, ["skipped:missing"], "not a demo photo crop")
                continue
            path, (left, top, side) = parsed
            photo = _demo_photo(str(path))
            if photo.image is None:
                yield source_id, Decoded(None, list(photo.reasons), photo.message)
                continue
            crop = photo.image.crop((left, top, left + side, top + side))
            yield source_id, Decoded(crop, list(photo.reasons))


class ImageListSource(ImageSource):
    """Images given in memory (PIL images or file paths), for notebook use; ids are their positions.

    Paths are decoded like a folder's files; PIL images are converted to RGB as they are.
    """

    def __init__(self, images: Sequence[Image.Image | str | Path]):
        if not images:
            raise SourceError("no images given; pass PIL images, image paths or a folder")
        self.description = f"{len(images)} images"
        self._items = {f"{i}": item for i, item in enumerate(images)}

    def ids(self) -> list[str]:
        return list(self._items)

    def fingerprint(self) -> str:
        return _hash_lines(f"{key}\t{id(item)}" for key, item in self._items.items())

    def load_many(
        self, source_ids: Sequence[str], draft_size: int | None = None
    ) -> Iterator[tuple[str, Decoded]]:
        for source_id in source_ids:
            item = self._items.get(source_id)
            if item is None:
                yield source_id, Decoded(None, ["skipped:missing"])
            elif isinstance(item, Image.Image):
                image, reasons = (item, []) if item.mode == "RGB" else (_to_rgb(item)[0], ["converted:mode"])
                yield source_id, Decoded(image, reasons)
            else:
                yield source_id, decode_image(Path(item), draft_size)
