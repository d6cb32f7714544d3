"""Image sources: stable ids, sharding, bad data converted or skipped and counted, early errors."""

from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from atlas.data.open import open_source
from atlas.data.source import (
    MAX_SIDE,
    MIN_SIDE,
    DemoSource,
    SkippedInput,
    SourceError,
    decode_image,
    model_view,
)


def _noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _bomb_gif() -> bytes:
    """A 1 x 1 GIF whose header claims 65535 x 65535 pixels: PIL refuses it before decoding."""
    data = bytearray(_encoded(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = (65535).to_bytes(2, "little") * 2
    descriptor = data.index(b",")
    data[descriptor + 5 : descriptor + 9] = (65535).to_bytes(2, "little") * 2
    return bytes(data)


def write_bad_folder(root: Path) -> dict[str, str | None]:
    """Every kind of awkward file, and the reason each must be counted under (None: clean)."""
    good = _encoded(_noise(80, 60, 0), "JPEG")
    truncated_png = _encoded(_noise(90, 90, 1), "PNG")
    rgba = _noise(50, 50, 2, "RGBA")
    rgba.putalpha(Image.new("L", (50, 50), 10))
    palette_alpha = _noise(40, 40, 3).convert("P")
    palette_alpha.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to view"
    rotated = io.BytesIO()
    _noise(60, 30, 11).save(rotated, format="JPEG", exif=exif)
    files = {
        "good.jpg": (good, None),
        "phone.jpg": (rotated.getvalue(), "converted:rotated"),
        "icon.webp": (_encoded(_noise(40, 40, 12), "WEBP"), None),
        "nested/deeper/good.png": (_encoded(_noise(64, 64, 4), "PNG"), None),
        "corrupt.jpg": (b"this is not an image" * 20, "skipped:corrupt"),
        "truncated.png": (truncated_png[: len(truncated_png) // 2], "skipped:truncated"),
        "gray.png": (_encoded(_noise(48, 48, 5, "L"), "PNG"), "converted:grayscale"),
        "cmyk.jpg": (_encoded(_noise(48, 48, 6, "CMYK"), "JPEG"), "converted:cmyk"),
        "alpha.png": (_encoded(rgba, "PNG"), "converted:alpha"),
        "palette.gif": (_encoded(palette_alpha, "GIF"), "converted:alpha"),
        "tiny.png": (_encoded(_noise(MIN_SIDE - 1, 40, 7), "PNG"), "skipped:tiny"),
        "huge.png": (
            _encoded(Image.new("RGB", (MAX_SIDE + 500, 300), (10, 200, 30)), "PNG"),
            "converted:downscaled",
        ),
        "bomb.gif": (_bomb_gif(), "skipped:too_large"),
    }
    for name, (data, _) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.png").write_bytes(good)
    return {name: reason for name, (_, reason) in files.items()}


def test_folder_source_counts_every_kind_of_bad_image(tmp_path: Path) -> None:
    expected = write_bad_folder(tmp_path)
    source = open_source(tmp_path)
    assert source.ids() == sorted(expected)  # recursive, relative POSIX paths, no txt, no dot folders
    skipped: list[SkippedInput] = []
    good, counts = source.load_batch(source.ids(), skipped=skipped)
    assert counts == Counter(reason for reason in expected.values() if reason)
    assert {(s.source_id, f"skipped:{s.reason}") for s in skipped} == {
        (name, reason) for name, reason in expected.items() if (reason or "").startswith("skipped")
    }
    assert all(s.message for s in skipped)  # why, in words, for the store's report
    loaded = dict(good)
    assert set(loaded) == {
        name for name, reason in expected.items() if not (reason or "").startswith("skipped")
    }
    assert all(image.mode == "RGB" for image in loaded.values())
    assert max(loaded["huge.png"].size) == MAX_SIDE
    assert loaded["phone.jpg"].size == (30, 60)  # stored landscape, shown portrait
    # Transparent pixels become neutral gray, not black.
    assert loaded["alpha.png"].getpixel((0, 0)) != (0, 0, 0)


def test_load_names_the_reason_for_a_bad_image(tmp_path: Path) -> None:
    write_bad_folder(tmp_path)
    source = open_source(tmp_path)
    with pytest.raises(SourceError, match="truncated"):
        source.load("truncated.png")
    assert source.load("cmyk.jpg").mode == "RGB"


def test_draft_decodes_jpeg_near_the_requested_size() -> None:
    decoded = decode_image(_encoded(_noise(800, 600, 8), "JPEG"), draft_size=64)
    assert decoded.image is not None
    assert 64 <= min(decoded.image.size) < 600


def test_model_view_is_the_center_square() -> None:
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # the centered square is blue
    view = model_view(image, 32)
    assert view.size == (32, 32)
    pixels = np.asarray(view)
    assert (pixels[..., 2] > 200).all() and (pixels[..., 0] < 64).all()  # no red side in view


def test_demo_source_ids_are_stable_and_load_their_crop() -> None:
    first, second = DemoSource(), open_source("demo")
    ids = first.ids()
    assert ids == second.ids()
    assert first.fingerprint() == second.fingerprint()
    assert 200 <= len(ids) <= 1000
    assert len(set(ids)) == len(ids)
    photos = {i.split("@")[0] for i in ids}
    assert {"demo:astronaut.png", "demo:china.jpg"} <= photos  # skimage and sklearn both present
    astronaut_sides = {i.rsplit("@", 1)[1].split("x")[0] for i in ids if i.startswith("demo:astronaut.png@")}
    assert len(astronaut_sides) >= 3  # crops at several scales
    sample = ids[len(ids) // 2]
    side = int(sample.rsplit("@", 1)[1].split("x")[0])
    image = first.load(sample)
    assert image.size == (side, side) and image.mode == "RGB"


def test_shards_cover_every_id_once_and_pickle() -> None:
    source = open_source("demo")
    shards = source.shards(50)
    flat = [i for shard in shards for i in shard.source_ids]
    assert flat == source.ids()
    assert all(len(s.source_ids) <= 50 for s in shards)
    assert [s.index for s in shards] == list(range(len(shards)))
    clone = pickle.loads(pickle.dumps((source, shards[1])))
    assert clone[1] == shards[1]
    assert clone[0].load(shards[1].source_ids[0]).size == source.load(shards[1].source_ids[0]).size
    with pytest.raises(SourceError, match="shard_size"):
        source.shards(0)


def test_folder_fingerprint_follows_content(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_encoded(_noise(32, 32, 9), "PNG"))
    before = open_source(tmp_path).fingerprint()
    assert open_source(tmp_path).fingerprint() == before
    (tmp_path / "b.png").write_bytes(_encoded(_noise(32, 32, 10), "PNG"))
    assert open_source(tmp_path).fingerprint() != before


def test_parquet_source_reads_rows_across_row_groups(tmp_path: Path) -> None:
    images = [_noise(40, 40, seed) for seed in range(7)]
    table = pa.table(
        {
            "label": pa.array([f"n{i}" for i in range(7)]),
            "png": pa.array([_encoded(image, "PNG") for image in images[:6]] + [None], pa.binary()),
        }
    )
    path = tmp_path / "photos.parquet"
    pq.write_table(table, path, row_group_size=3)
    source = open_source(path)  # the only binary column is picked
    assert source.ids() == [f"photos.parquet#row{i}" for i in range(7)]
    good, counts = source.load_batch(list(reversed(source.ids())))
    assert counts == Counter({"skipped:missing": 1})
    for source_id, image in good:
        row = int(source_id.rsplit("row", 1)[1])
        assert np.array_equal(np.asarray(image), np.asarray(images[row]))
    assert pickle.loads(pickle.dumps(source)).load("photos.parquet#row4").size == (40, 40)


def test_parquet_struct_column_like_hugging_face(tmp_path: Path) -> None:
    struct = pa.array([{"bytes": _encoded(_noise(30, 30, 1), "JPEG"), "path": "a.jpg"}])
    path = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"image": struct, "other": pa.array([b"x"], pa.binary())}), path)
    source = open_source(path)
    assert source.load("hf.parquet#row0").size == (30, 30)


@pytest.mark.parametrize(
    ("column", "message"),
    [("missing", "no column 'missing'"), ("label", "not image bytes")],
)
def test_parquet_column_errors(tmp_path: Path, column: str, message: str) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"label": ["a"], "image": pa.array([b"x"], pa.binary())}), path)
    with pytest.raises(SourceError, match=message):
        open_source(path, column=column)


def test_parquet_without_images_or_rows_fails_early(tmp_path: Path) -> None:
    no_binary = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"label": ["a"]}), no_binary)
    with pytest.raises(SourceError, match="no binary image column"):
        open_source(no_binary)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"image": pa.array([], pa.binary())}), empty)
    with pytest.raises(SourceError, match="no rows"):
        open_source(empty)


def test_missing_empty_and_unknown_sources_fail_early(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="holds no images"):
        open_source(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(SourceError, match="neither a folder nor a .parquet"):
        open_source(tmp_path / "data.csv")
