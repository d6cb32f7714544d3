"""Dictionaries of any size K over a layer of C channels, and every file that cannot be one.

Known answers: the derived layer's channel i is the projection on row i, as computed here, for
K < C, K = C and K = 64 x C (an overcomplete SAE); each view (renders, examples, histograms,
activation-atlas places, names in job.json) works at every K. Generated inputs: arrays of every
dtype and shape, damaged `.npy` bytes and names with every character but a newline.
"""

from __future__ import annotations

import importlib
import io
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from atlas.data.open import open_source
from atlas.data.source import ShardRef
from atlas.kinds.examples import scan_shard
from atlas.models import load_model
from atlas.plan.dictionary import DictionaryError, attach_layers, load_dictionary
from atlas.plan.spec import LayerSpec, RenderSpec, parse_spec

BASE = "conv3"  # tiny-cnn: 32 channels on an 8 x 8 map
C = 32
SIZES = {"K<C": 5, "K=C": C, "K=64C": 64 * C}


def _dictionary(tmp_path: Path, k: int, names: list[str] | None = None) -> Path:
    """A random non-identity (k, C) float64 dictionary (as users save them), names optional."""
    path = tmp_path / f"sae{k}.npy"
    np.save(path, np.random.default_rng(k).normal(size=(k, C)))
    if names is not None:
        path.with_suffix(".names.txt").write_bytes(("\n".join(names) + "\n").encode())
    return path


def _job_text(folder: Path, layer: str) -> str:
    """A tiny job over one `[[layers]]` entry (its lines given), without dataset examples."""
    return (
        f'[job]\nname = "d"\nout = "{folder / "out"}"\n[model]\nname = "tiny-cnn"\n'
        f"[[layers]]\n{layer}\n[render]\nsteps = 2\nsize = 32\n[examples]\nenabled = false\n"
    )


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-cnn")


@pytest.mark.parametrize("k", SIZES.values(), ids=SIZES.keys())
def test_every_view_of_a_dictionary_layer_is_the_projection_on_its_rows(tmp_path, model, k: int) -> None:
    from atlas.kinds.actatlas.stage import PlacesWork, places_table
    from atlas.optvis import render_channels
    from atlas.plan.units import make_unit

    path = _dictionary(tmp_path, k)
    vectors = np.load(path).astype(np.float32)
    (layer,) = attach_layers(model, [LayerSpec(BASE, None, path)])
    assert model.channels(layer.name) == k

    probe = torch.rand(3, 3, 64, 64)
    out = model.activations(probe, [BASE, layer.name])
    expected = np.einsum("bchw,kc->bkhw", out[BASE].numpy(), vectors)
    np.testing.assert_allclose(out[layer.name].numpy(), expected, rtol=1e-4, atol=1e-4)

    # examples and histograms: the scan of the layer equals the scan of its rows as directions
    source = open_source("demo")
    shard = ShardRef(0, tuple(source.ids()[:12]))
    directions = {BASE: torch.from_numpy(vectors)}
    scan = scan_shard(model, [layer.name], source, shard, k=3, directions=directions)
    ours, projected = scan.layers[layer.name], scan.layers[f"{BASE}@direction"]
    assert ours.top.values.shape[0] == k and ours.histogram.shape[0] == k
    np.testing.assert_allclose(ours.top.values, projected.top.values, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.bottom.values, projected.bottom.values, rtol=1e-4, atol=1e-4)
    assert (ours.histogram.sum(axis=1) == 12 * 8 * 8).all()  # every position of every image

    # renders: the first and last direction; each image's activation is its row's projection
    settings_ = replace(RenderSpec(), steps=2, size=32, batch=2, objectives=("channel",))
    rendered = render_channels(model, layer.name, (0, k - 1), settings_)
    assert [r.channel for r in rendered] == [0, k - 1]
    pixels = torch.from_numpy(np.stack([r.image for r in rendered])).permute(0, 3, 1, 2).float() / 255
    base = model.activations(pixels, [BASE])[BASE].numpy().mean(axis=(2, 3))  # (2, C)
    measured = [base[i] @ vectors[r.channel] for i, r in enumerate(rendered)]
    activations = [r.activation for r in rendered]  # of the float images: uint8 moves them ~1e-3
    np.testing.assert_allclose(activations, measured, rtol=0.02, atol=0.005)

    # activation-atlas places: cells (means over the base layer's C channels) against the K rows
    means = np.random.default_rng(1).normal(size=(6, C)).astype(np.float32)
    cells = pa.table({"cell": np.arange(6) * 7, "mean": list(means)})
    spec = parse_spec(_job_text(tmp_path, f'name = "{BASE}"'), source="<t>").replace(
        layers=(LayerSpec(BASE), layer)
    )
    unit = make_unit(model.digest, layer.name, (), PlacesWork("grid-key", 4))
    table = places_table(spec, model, cells, unit).to_pydict()
    assert set(table["direction"]) == set(range(k))  # each direction has its places
    projection = means @ vectors.T
    for cell, direction, value in zip(table["cell"], table["direction"], table["projection"], strict=True):
        assert value == pytest.approx(projection[cell // 7, direction], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("k", SIZES.values(), ids=SIZES.keys())
def test_job_json_names_every_direction_of_the_dictionary(tmp_path, k: int) -> None:
    """The reported bug: job_info read the dictionary with K where the layer's C is meant."""
    from atlas.run.job import job_info, prepare

    names = [f"feature {i}\u2028line two\x0bof it\x1c{i}" for i in range(k)]
    path = _dictionary(tmp_path, k, names)
    layer = f'name = "{BASE}"\nchannels = [0, {k - 1}]\ndictionary = "{path}"'
    prepared = prepare(parse_spec(_job_text(tmp_path, layer), source="<t>"))
    (entry,) = json.loads(json.dumps(job_info(prepared, "now")))["layers"]
    assert entry["total_channels"] == k and entry["channels"] == [0, k - 1]
    assert entry["names"] == names
    assert {u.channels for u in prepared.plan.units} <= {(0,), (k - 1,), (0, k - 1)}


def test_dictionary_layer_names_and_so_content_keys_are_pinned(tmp_path) -> None:
    """The layer name (its hash is in every content key) as the code before this reader gave it,
    whatever the format: float64 .npy with CRLF names, float16 safetensors with metadata names,
    bfloat16 safetensors (as SAEs are often saved; it could not be read before)."""
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    matrix = (np.arange(8 * C).reshape(8, C) - 100) / 8  # exact in float16
    names = [f"n{i}" for i in range(8)]
    np.save(tmp_path / "a.npy", matrix)
    (tmp_path / "a.names.txt").write_bytes(("\r\n".join(names) + "\r\n").encode())
    save_file(
        {"w": matrix.astype(np.float16)},
        str(tmp_path / "a.safetensors"),
        metadata={"names": json.dumps(names)},
    )
    np.save(tmp_path / "b.npy", matrix)
    assert load_dictionary(tmp_path / "a.npy", BASE, C).layer_name == "conv3@a:96d7b6c8"
    assert load_dictionary(tmp_path / "a.safetensors", BASE, C).layer_name == "conv3@a:96d7b6c8"
    assert load_dictionary(tmp_path / "b.npy", BASE, C).layer_name == "conv3@b:a9f10c1f"
    save_torch({"w": torch.from_numpy(matrix).bfloat16()}, str(tmp_path / "b.safetensors"))
    assert load_dictionary(tmp_path / "b.safetensors", BASE, C).layer_name == "conv3@b:a9f10c1f"


# ---- files that cannot be dictionaries: a space of arrays, and a space of damaged bytes

EVERY_DTYPE = st.one_of(
    hnp.scalar_dtypes(),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
    st.just(np.dtype(np.float16)),
    st.just(np.dtype(np.longdouble)),
)
SHAPES = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    st.tuples(st.integers(0, 5), st.sampled_from([C - 1, C, C + 1])),
)


def _usable(matrix: np.ndarray) -> bool:
    """The rule, from the outside: K >= 1 real (K, C) rows that stay finite as float32."""
    if matrix.dtype.kind not in "biuf" or matrix.ndim != 2 or matrix.shape[1] != C or not len(matrix):
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(matrix.astype(np.float32)).all())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrix=hnp.arrays(EVERY_DTYPE, SHAPES))
def test_any_array_loads_exactly_when_it_is_usable(matrix: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npy"
        np.save(path, matrix)
        if _usable(matrix):
            loaded = load_dictionary(path, BASE, C)
            assert loaded.vectors.dtype == np.float32 and loaded.vectors.shape == matrix.shape
            np.testing.assert_array_equal(loaded.vectors, matrix.astype(np.float32))
            assert len(loaded.names) == len(matrix)
        else:
            with pytest.raises(DictionaryError) as caught:
                load_dictionary(path, BASE, C)
            assert "\n" not in str(caught.value) and str(path) in str(caught.value)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), data=st.data())
def test_a_damaged_npy_is_refused_at_every_length(k: int, data: st.DataObject) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((k, C)))
    whole = buffer.getvalue()
    cut = data.draw(st.integers(0, len(whole) - 1), label="truncated at")
    noise = data.draw(st.binary(max_size=64), label="garbage")
    with tempfile.TemporaryDirectory() as folder:
        for name, content in [("cut.npy", whole[:cut]), ("noise.npy", noise)]:
            (Path(folder) / name).write_bytes(content)
            with pytest.raises(DictionaryError):
                load_dictionary(Path(folder) / name, BASE, C)


NAME_CHARACTERS = st.one_of(
    st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
    st.sampled_from(["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"]),
)


@settings(max_examples=80, deadline=None)
@given(names=st.lists(st.text(NAME_CHARACTERS, max_size=8), min_size=1, max_size=6), crlf=st.booleans())
def test_names_are_one_per_newline_whatever_else_they_hold(names: list[str], crlf: bool) -> None:
    ending = "\r\n" if crlf else "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npy"
        np.save(path, np.ones((len(names), C), np.float32))
        names_file = path.with_suffix(".names.txt")
        names_file.write_bytes((ending.join(names) + ending).encode())
        assert load_dictionary(path, BASE, C).names == tuple(names)
        if names[-1]:  # without the final newline, the same names
            names_file.write_bytes(ending.join(names).encode())
            assert load_dictionary(path, BASE, C).names == tuple(names)
        names_file.write_bytes((ending.join([*names, "extra"]) + ending).encode())
        with pytest.raises(
            DictionaryError, match=f"names {len(names) + 1} directions but holds {len(names)}"
        ):
            load_dictionary(path, BASE, C)


# ---- `atlas plan` stops on each class of unusable file, before any lease or work


def _write_bad(kind: str, path: Path) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    good = rng.normal(size=(8, C))
    buffer = io.BytesIO()
    np.save(buffer, good)
    npy = path / "bad.npy"
    if kind == "object array":
        np.save(npy, np.array([[None] * C] * 2, dtype=object), allow_pickle=True)
    elif kind == "truncated npy":
        npy.write_bytes(buffer.getvalue()[:-100])
    elif kind == "text file":
        npy.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    elif kind == "beyond float32":
        np.save(npy, good * 1e300)
    elif kind == "NaN values":
        np.save(npy, np.where(good > 1, np.nan, good))
    elif kind == "complex values":
        np.save(npy, good + 1j)
    elif kind == "1-D":
        np.save(npy, good[0])
    elif kind == "3-D":
        np.save(npy, good[None])
    elif kind == "wrong column count":
        np.save(npy, good[:, :-1])
    elif kind == "no rows":
        np.save(npy, good[:0])
    elif kind == "names count":
        np.save(npy, good)
        npy.with_suffix(".names.txt").write_text("a\nb\n")
    elif kind == "names not UTF-8":
        np.save(npy, good)
        npy.with_suffix(".names.txt").write_bytes(b"\xff\xfe\x00a\n")
    elif kind == "empty safetensors":
        (path / "bad.safetensors").write_bytes(b"")
        return path / "bad.safetensors"
    elif kind == "safetensors without tensors":
        save_file({}, str(path / "bad.safetensors"))
        return path / "bad.safetensors"
    elif kind == "safetensors names not a list":
        save_file({"w": good.astype(np.float32)}, str(path / "bad.safetensors"), metadata={"names": "{"})
        return path / "bad.safetensors"
    return npy


BAD = [
    "object array",
    "truncated npy",
    "text file",
    "beyond float32",
    "NaN values",
    "complex values",
    "1-D",
    "3-D",
    "wrong column count",
    "no rows",
    "names count",
    "names not UTF-8",
    "empty safetensors",
    "safetensors without tensors",
    "safetensors names not a list",
]


@pytest.mark.parametrize("kind", BAD)
def test_atlas_plan_and_run_stop_on_an_unusable_dictionary_in_one_line(tmp_path, kind: str) -> None:
    from click.testing import CliRunner

    from atlas.cli import main

    path = _write_bad(kind, tmp_path)
    job = tmp_path / "job.toml"
    job.write_text(_job_text(tmp_path, f'name = "{BASE}"\ndictionary = "{path.name}"'))
    for command in ("plan", "run"):
        result = CliRunner().invoke(main, [command, str(job)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(tmp_path / "bad.") in lines[0], (
            result.output
        )
        assert "Traceback" not in result.output
        assert not (tmp_path / "out").exists()  # no output folder, store or lease


def test_a_timeline_refuses_a_dictionary_instead_of_following_the_base_channels(tmp_path) -> None:
    """A timeline's units are the base layer's channels: a dictionary there would be dropped unseen."""
    from click.testing import CliRunner

    from atlas.cli import main

    path = _dictionary(tmp_path, 64 * C)
    job = tmp_path / "job.toml"
    job.write_text(
        _job_text(tmp_path, f'name = "{BASE}"\nchannels = [0, 100]\ndictionary = "{path}"').replace(
            'name = "tiny-cnn"', 'name = "tiny-cnn"\ncheckpoints = ["ckpt/step-*.pt"]'
        )
    )
    result = CliRunner().invoke(main, ["timeline", str(job)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "dictionary" in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_calibrate_measures_the_dictionary_layer_the_job_scans(tmp_path, monkeypatch) -> None:
    """`atlas calibrate` timed the base layer's C channels where the job scans K = 64 x C directions."""
    from atlas.run.cost import calibrate

    examples = importlib.import_module(
        "atlas.kinds.examples"
    )  # `atlas.kinds.examples` is also the notebook call

    scanned: list[str] = []

    class Recording(examples.BatchScanner):
        def __init__(self, model, layers, *args, **kwargs) -> None:
            scanned.extend(layers)
            super().__init__(model, layers, *args, **kwargs)

    monkeypatch.setattr(examples, "BatchScanner", Recording)
    layer = f'name = "{BASE}"\ndictionary = "{_dictionary(tmp_path, 64 * C)}"'
    model = load_model("tiny-cnn")
    calibrate(parse_spec(_job_text(tmp_path, layer), source="<t>"), model, repeats=1)
    (name,) = scanned
    assert model.channels(name) == 64 * C


@pytest.mark.parametrize("layer", ["logits", "fc"])
def test_a_dictionary_on_a_layer_without_a_map_is_one_line(tmp_path, layer: str) -> None:
    """Logits and flat outputs have no positions to project (a KeyError traceback before)."""
    from click.testing import CliRunner

    from atlas.cli import main

    path = tmp_path / "d.npy"
    np.save(path, np.ones((3, 10)))  # tiny-cnn's logits: 10 classes
    job = tmp_path / "job.toml"
    job.write_text(_job_text(tmp_path, f'name = "{layer}"\ndictionary = "{path}"'))
    result = CliRunner().invoke(main, ["plan", str(job)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and f"layer {layer!r}" in lines[0], result.output


def test_a_dictionary_on_a_class_token_is_refused_not_moved_to_the_tokens(tmp_path) -> None:
    """`blocks.0@cls` would have been cut at `@` and attached to every token of blocks.0."""
    model = load_model("timm:deit_tiny_patch16_224", weights="none")
    path = tmp_path / "d.npy"
    np.save(path, np.ones((3, model.channels("blocks.0"))))
    with pytest.raises(DictionaryError, match="class token"):
        attach_layers(model, [LayerSpec("blocks.0@cls", None, path)])
