"""Class names: what a model declares its logits to mean (torchvision weights' categories,
ImageNet's for efficientnet-lite0's weights, a user module's `class_names`), written into job.json
and shown by an SAE layer's logit effects and feature index; none for tiny-cnn or weights "none"."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from browsers import CHROMIUM, chromium
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models._meta import _IMAGENET_CATEGORIES

from atlas.api import as_model
from atlas.cli import main
from atlas.models import load_model
from atlas.models.registry import ModelError, build
from atlas.store.store import open_store

_MODULES = itertools.count()  # each test's own module name: Python caches imports by name


class _Head(nn.Module):
    """A map layer `feat` read by a linear head of `classes` outputs, declaring `names`."""

    def __init__(self, classes: int, names: object = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feat = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, classes)
        self.input_size = 16
        if names is not None:
            self.class_names = names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(x).mean(dim=(2, 3)))


def test_a_registry_models_names_are_its_weights_classes() -> None:
    named = load_model("efficientnet-lite0")  # its ImageNet weights ship installed
    assert named.class_names == tuple(_IMAGENET_CATEGORIES) and len(named.class_names) == 1000
    assert named.class_names[207] == "golden retriever"
    bare = load_model("efficientnet-lite0", weights="none")
    assert bare.class_names is None and bare.digest != named.digest
    assert load_model("tiny-cnn").class_names is None
    assert "class_names" not in repr(named.preprocessing)  # a thousand names stay out of logs


@pytest.mark.parametrize(
    ("name", "weights"),
    [(n, w.name) for n in ("resnet18", "mobilenet_v3_small") for w in tvm.get_model_weights(n)]
    + [("resnet18", "default"), ("squeezenet1_0", "default")],
)
def test_torchvision_weights_name_their_categories(monkeypatch, name: str, weights: str) -> None:
    """With weights the names are the weights' own categories; without, or with a checkpoint, none.
    (The weights cannot be downloaded here: the builder is the architecture without them.)"""
    real = tvm.get_model_builder(name)
    given_weights = []

    def offline(**kwargs: object) -> nn.Module:
        given_weights.append(kwargs.get("weights"))
        return real(weights=None)

    monkeypatch.setattr(tvm, "get_model_builder", lambda _: offline)
    enum = tvm.get_model_weights(name)
    chosen = enum.DEFAULT if weights == "default" else enum[weights]
    module, prep = build(f"torchvision:{name}", weights)
    assert given_weights == [chosen] and prep.class_names == tuple(chosen.meta["categories"])
    assert build(f"torchvision:{name}", "none")[1].class_names is None
    checkpoint = Path(__file__).parent / f"_{name}.pt"
    try:
        torch.save(module.state_dict(), checkpoint)
        assert build(f"torchvision:{name}", weights, checkpoint)[1].class_names is None
    finally:
        checkpoint.unlink(missing_ok=True)


NAMES = st.lists(st.text(max_size=12), min_size=1, max_size=14)


@settings(max_examples=40, deadline=None)
@given(classes=st.integers(1, 12), names=NAMES, container=st.sampled_from([list, tuple]))
def test_a_modules_class_names_name_every_logit_or_fail(classes: int, names: list[str], container) -> None:
    module = _Head(classes, container(names))
    if len(names) == classes:
        model = as_model(module, device="cpu")
        assert model.class_names == tuple(names)
        assert model.digest == as_model(_Head(classes), device="cpu").digest  # names change no key
    else:
        with pytest.raises(
            ModelError, match=rf"declares {len(names)} class_names but its output has {classes} classes; "
        ):
            as_model(module, device="cpu")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("cat dog", r"_Head.class_names is a str, not a list of strings"),
        ({"cat": 0, "dog": 1}, r"_Head.class_names is a dict, not a list of strings"),
        (np.array(["cat", "dog"]), r"_Head.class_names is a ndarray, not a list of strings"),
        ([0, 1], r"_Head.class_names\[0\] is a int \(0\), not a string"),
        (["cat", None], r"_Head.class_names\[1\] is a NoneType \(None\), not a string"),
        (["cat", b"dog"], r"_Head.class_names\[1\] is a bytes \(b'dog'\), not a string"),
    ],
)
def test_class_names_of_another_type_fail_naming_the_fix(names: object, message: str) -> None:
    with pytest.raises(ModelError, match=message + r"; declare one string per output class"):
        as_model(_Head(2, names), device="cpu")


def test_class_names_of_a_model_without_class_outputs_fail() -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 1))
    module.class_names = ["a", "b", "c", "d"]
    with pytest.raises(ModelError, match="declares 4 class_names but its output has no"):
        as_model(module, device="cpu")


@pytest.mark.parametrize(
    ("names", "message"),
    [('["a"] * 5', "declares 5 class_names but its output has 6"), ("[1] * 6", "class_names[0] is a int")],
)
def test_a_spec_whose_module_declares_bad_class_names_is_one_error_line(
    tmp_path: Path, names: str, message: str
) -> None:
    module = f"badnames{next(_MODULES)}"
    (tmp_path / f"{module}.py").write_text(_module_source(names))
    spec = _spec(tmp_path, f"module:{module}:build", sae=False)
    result = CliRunner().invoke(main, ["run", str(spec), "--no-site"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


# The names cover what a page must escape or show as it is: quotes, markup, `/`, unicode, spaces.
SIX = ["Maltese dog", "jack-o'-lantern", "猫 tabby cat", "a/b", "<b>bold</b> & co", 'say "cheese"']


def _module_source(names: str) -> str:
    return textwrap.dedent(
        f"""
        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(1)
                self.feat = nn.Conv2d(3, 8, 3, stride=2, padding=1)
                self.relu = nn.ReLU()
                self.head = nn.Linear(8, 6)
                self.input_size = 32
                self.class_names = {names}

            def forward(self, x):
                return self.head(self.relu(self.feat(x)).mean(dim=(2, 3)))


        def build():
            return Net()
        """
    )


def _spec(folder: Path, model: str, sae: bool = True) -> Path:
    layer = "feat" if model.startswith("module:") else "conv2"
    width = 8 if layer == "feat" else 32
    if sae:
        rng = np.random.default_rng(4)
        np.savez(
            folder / "sae.npz",
            activation=np.array("relu"),
            W_enc=rng.normal(0, 1 / np.sqrt(width), (width, 12)).astype(np.float32),
            b_enc=rng.normal(0, 0.2, 12).astype(np.float32),
            W_dec=rng.normal(0, 1 / np.sqrt(12), (12, width)).astype(np.float32),
            b_dec=np.zeros(width, np.float32),
        )
    spec = folder / "job.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [job]
            out = "{folder / "out"}"
            [model]
            name = "{model}"
            [[layers]]
            name = "{layer}"
            {'sae = "sae.npz"' if sae else ""}
            channels = "0:12"
            [render]
            enabled = false
            [examples]
            source = "demo"
            k = 2
            [interactions]
            random_directions = 0
            """
        )
    )
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("named", [True, False], ids=["module-with-names", "tiny-cnn"])
def test_an_sae_layers_logit_effects_and_index_name_the_classes(tmp_path: Path, named: bool) -> None:
    if named:
        module = f"namednet{next(_MODULES)}"
        (tmp_path / f"{module}.py").write_text(_module_source(repr(SIX)))
        spec = _spec(tmp_path, f"module:{module}:build")
    else:
        spec = _spec(tmp_path, "tiny-cnn")
    result = CliRunner().invoke(main, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert job.get("classes") == (SIX if named else None)
    names = SIX if named else None
    store = open_store(tmp_path / "out")
    (layer,) = store.layers("features")
    stored = {r["channel"]: r for r in store.read("features", layer).to_pylist()}
    site = tmp_path / "out" / "site"
    page_file = next(p for p in site.glob("*-sae*.html") if p.name.count(".") == 1)
    index_file = next(site.glob("*-sae*.features.js"))
    rows = json.loads(index_file.read_text().split(" = ", 1)[1].rstrip().rstrip(";"))
    assert [row[0] for row in rows] == list(range(12))
    for row in rows:  # the index row: the class raised most, and its name when the model has names
        assert row[2] == stored[row[0]]["raises"][0]
        assert row[5:] == ([names[row[2]]] if names else [])
    if not CHROMIUM.exists():
        return
    with chromium() as browser:
        errors: list[str] = []
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        for feature in (0, 7):
            page.goto(page_file.as_uri() + f"#channel-{feature}")
            page.wait_for_selector("#channel-view .features")
            text = page.locator("#channel-view .features").inner_text()
            for key, words in (("raises", "Raises"), ("lowers", "Lowers")):
                pairs = zip(stored[feature][key], stored[feature][f"{key}_by"], strict=True)
                line = f"{words} the logits of classes " + ", ".join(
                    f"{cls}{f' {names[cls]}' if names else ''} ({_js_signed(change)})"
                    for cls, change in pairs
                )
                assert line in text.splitlines(), (line, text)
        index = browser.new_page()
        index.on("pageerror", lambda error: errors.append(str(error)))
        index.goto(next(site.glob("*-sae*.features.html")).as_uri())
        index.wait_for_selector("#feature-results tr")
        raised = index.locator("#feature-results tr td:nth-child(3)").all_inner_texts()
        assert raised == [f"{row[2]} {names[row[2]]}" if names else f"class {row[2]}" for row in rows]
        top = rows[0][2]
        queries = [(f"class {top}", [row[0] for row in rows if row[2] == top])]
        if names:  # a word of a class name finds the features raising that class most (any case)
            for word in {"maltese", "TABBY", "猫", "<b>bold</b>", "o'-lantern", '"cheese"', "a/b"}:
                expected = [row[0] for row in rows if word.lower() in (row[1] + " " + row[5]).lower()]
                queries.append((word, expected))
            queries.append((f"class {top} {names[top].split()[0]}", [r[0] for r in rows if r[2] == top]))
            assert sum(bool(expected) for _, expected in queries) > 2  # the words find features
        for query, expected in queries:
            index.fill("#feature-search", query)
            shown_rows = index.locator("#feature-results tr td:first-child").all_inner_texts()
            assert [int(text.lstrip("#")) for text in shown_rows] == expected, query
        assert not errors


def _js_signed(value: float) -> str:
    """A change as the channel view prints it: rounded to 3 decimals (the site's), JavaScript's
    shortest form of the number, with `+` when above zero."""
    rounded = round(float(value), 3)
    text = repr(rounded + 0.0).removesuffix(".0")  # JavaScript prints 2 for 2.0 and 0 for -0.0
    return ("+" if rounded > 0 else "") + ("0" if text == "-0" else text)
