"""The scan's tensor decoder (batched `torchvision.io.decode_jpeg`, nvJPEG on a GPU) against PIL's
path, on the CPU: the same model inputs within a stated tolerance, exactly the same skips and
conversions, and the same scan results."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from atlas.data.open import open_source
from atlas.data.source import EXIF_ORIENTATION, decode_for_model
from atlas.kinds.examples import scan_shard
from atlas.kinds.examples.decode import TensorDecoder, _decode_jpegs, jpeg_plan
from atlas.models import load_model

# What "the same model input" means (grey levels of 255): see atlas/kinds/examples/decode.py.
MEAN_LEVELS = 1.5
MAX_LEVELS = 48


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour field with some grain: edges and texture for the codec to get wrong."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.integers(-16, 17, (height, width, 3))
    return Image.fromarray((smooth + grain).clip(0, 255).astype(np.uint8))


def jpeg(image: Image.Image, mode: str = "RGB", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def both(folder: Path, size: int) -> tuple:
    source = open_source(folder)
    ids = source.ids()
    return decode_for_model(source, ids, size), TensorDecoder("cpu")(source, ids, size)


def assert_close(pil: np.ndarray, tensor: torch.Tensor) -> None:
    difference = np.abs(pil.astype(np.float32) - tensor.numpy().astype(np.float32))
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == pil.shape
    assert difference.mean() <= MEAN_LEVELS and difference.max() <= MAX_LEVELS, (
        difference.mean(),
        difference.max(),
    )


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each channel's top-k images found by both scans (near-ties swap at rank k)."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    width=st.integers(16, 1400),
    height=st.integers(16, 1400),
    mode=st.sampled_from(["RGB", "L"]),
    progressive=st.booleans(),
    size=st.sampled_from([32, 64, 224]),
)
def test_tensor_decoded_jpegs_give_the_model_what_pil_gives(
    tmp_path_factory, width, height, mode, progressive, size
):
    folder = tmp_path_factory.mktemp("jpegs")
    (folder / "a.jpg").write_bytes(jpeg(photo(width, height), mode, progressive=progressive))
    (pil_ids, pil, pil_counts, _), (ids, pixels, counts, _) = both(folder, size)
    if size == 224:  # the tensor path took it (at smaller sizes PIL's box reduce may apply)
        assert jpeg_plan((folder / "a.jpg").read_bytes(), size) is not None
    assert ids == pil_ids == ["a.jpg"] and counts == pil_counts
    assert_close(pil, pixels)


def test_what_the_tensor_path_leaves_to_pil_is_decoded_skipped_and_counted_as_before(tmp_path):
    image = photo(120, 90, seed=1)
    (tmp_path / "cmyk.jpg").write_bytes(jpeg(image, "CMYK"))
    (tmp_path / "png.png").write_bytes(_png(image))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    (tmp_path / "rotated.jpg").write_bytes(jpeg(image, exif=exif.tobytes()))
    whole = jpeg(image)
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg at all \xff\xd9")
    (tmp_path / "tiny.jpg").write_bytes(jpeg(photo(12, 40)))
    (tmp_path / "good.jpg").write_bytes(whole)
    (tmp_path / "gray.jpg").write_bytes(jpeg(image, "L"))
    (pil_ids, pil, pil_counts, pil_skipped), (ids, pixels, counts, skipped) = both(tmp_path, 64)
    assert ids == pil_ids == ["cmyk.jpg", "good.jpg", "gray.jpg", "png.png", "rotated.jpg"]
    assert counts == pil_counts and skipped == pil_skipped
    assert {s.reason for s in skipped} == {"truncated", "corrupt", "tiny"}
    assert counts["converted:cmyk"] == counts["converted:grayscale"] == counts["converted:rotated"] == 1
    for index, name in enumerate(ids):  # PIL decoded these in both paths: identical pixels
        if name in ("cmyk.jpg", "png.png", "rotated.jpg"):
            assert np.array_equal(pil[index], pixels[index].numpy())
    assert_close(pil, pixels)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_batch_the_decoder_rejects_is_decoded_image_by_image():
    good = torch.frombuffer(bytearray(jpeg(photo(40, 30))), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8 no image here \xff\xd9"), dtype=torch.uint8)
    images = _decode_jpegs([good, bad, good], torch.device("cpu"))
    assert images[1] is None and all(tuple(images[i].shape) == (3, 30, 40) for i in (0, 2))


def test_parquet_rows_decode_as_tensors_with_missing_rows_skipped_alike(tmp_path):
    rows = [jpeg(photo(80 + 8 * i, 64, seed=i)) for i in range(5)] + [b""]
    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": pa.array(rows, pa.binary())}), path)
    source = open_source(path)
    ids = [*source.ids(), "images.parquet#row99"]
    pil_ids, pil, pil_counts, pil_skipped = decode_for_model(source, ids, 48)
    got_ids, pixels, counts, skipped = TensorDecoder("cpu")(source, ids, 48)
    assert got_ids == pil_ids and len(got_ids) == 5 and counts == pil_counts and skipped == pil_skipped
    assert_close(pil, pixels)


def test_a_scan_with_tensor_decoding_finds_the_same_examples(tmp_path):
    for index in range(24):
        width, height = 48 + 7 * index, 200 - 5 * index
        (tmp_path / f"{index:02d}.jpg").write_bytes(jpeg(photo(width, height, seed=index)))
    source = open_source(tmp_path)
    (shard,) = source.shards(24)
    model = load_model("tiny-cnn")
    pil, tensor = (
        scan_shard(model, ["conv2", "conv3"], source, shard, k=4, batch_size=10, decoder=decoder)
        for decoder in (decode_for_model, TensorDecoder("cpu"))
    )
    assert pil.stats == tensor.stats == {"scanned": 24}
    for layer in ("conv2", "conv3"):
        a, b = pil.layers[layer], tensor.layers[layer]
        assert overlap(a.top.ids, b.top.ids) > 0.85 and overlap(a.bottom.ids, b.bottom.ids) > 0.85
        scale = np.abs(a.top.values).max()
        np.testing.assert_allclose(a.top.values, b.top.values, atol=0.05 * scale)
        np.testing.assert_allclose(a.sample_max, b.sample_max, atol=0.05 * scale)


def test_the_scan_forward_in_bf16_keeps_the_activations_close(tmp_path):
    for index in range(12):
        (tmp_path / f"{index:02d}.jpg").write_bytes(jpeg(photo(64, 64, seed=index)))
    source = open_source(tmp_path)
    (shard,) = source.shards(12)
    model = load_model("tiny-cnn")
    fp32, bf16 = (
        scan_shard(model, ["conv3"], source, shard, k=3, precision=precision)
        for precision in ("fp32", "bf16")
    )
    a, b = fp32.layers["conv3"], bf16.layers["conv3"]
    assert a.top.values.dtype == b.top.values.dtype == np.float32
    assert overlap(a.top.ids, b.top.ids) > 0.85
    np.testing.assert_allclose(a.top.values, b.top.values, atol=0.05 * np.abs(a.top.values).max())


def test_an_unknown_scan_precision_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(photo(32, 32)))
    source = open_source(tmp_path)
    with pytest.raises(ValueError, match="unknown scan precision 'fp8'"):
        scan_shard(load_model("tiny-cnn"), ["conv3"], source, source.shards(1)[0], precision="fp8")
