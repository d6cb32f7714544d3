"""Known answers of an SAE atlas: an SAE trained in the test (tests/sae_training.py) on the
four-family CNN's centred layer, run as a real `atlas run` job over an ImageFolder of family
images (one folder per family).

- the feature that responds most to a family has that family's images as its top examples, and
  the site enriches its page for that family's folder (atlas/site/labels.py);
- a feature made dead (its encoder bias far below zero) is listed dead in the layer's health line;
- a feature whose decoder row is wired to one class (the gradient of that class's logit over the
  others at the layer) names that class first among the classes it raises;
- with `sae_compare` naming an SAE of another seed, every feature's one-to-one match is stored and
  shown (the channel view's line, the layer's distribution).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from families import FAMILIES, FAMILY_LAYER, family_images, family_model
from PIL import Image
from sae_training import family_selectivity, layer_positions, save_saelens, train_sae

from atlas.cli import main
from atlas.kinds.stability import match_features
from atlas.site.stability import distribution
from atlas.store.store import open_store

HERE = Path(__file__).resolve().parent
FOLDERS = ("disks", "stripes", "checkerboards", "noise")  # ImageFolder labels, one per family
WIRED_CLASS = 2
TOP = 6  # examples per feature; the dataset has 8 images per family


@dataclass(frozen=True)
class PlantedJob:
    out: Path
    layer: str  # the SAE layer's name in the store
    by_family: list[int]  # the feature that responds most to each family
    dead: int
    wired: int
    decoders: tuple[np.ndarray, np.ndarray]  # the SAE's and the compared SAE's


def _class_direction(module: torch.nn.Module, layer_output: torch.Tensor, target: int) -> np.ndarray:
    """The direction at the layer that raises logit `target` over the others' mean fastest: the
    gradient on a mid-grey image, summed over positions, unit length."""
    acts = layer_output.detach().clone().requires_grad_(True)
    logits = module[int(FAMILY_LAYER) + 1 :](acts)[0]
    (logits[target] - logits.mean()).backward()
    direction = acts.grad.sum(dim=(0, 2, 3)).numpy()
    return (direction / np.linalg.norm(direction)).astype(np.float32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> PlantedJob:
    root = tmp_path_factory.mktemp("planted")
    torch.manual_seed(0)
    model = family_model()
    torch.save(model.module.state_dict(), root / "family.pt")
    shutil.copy(HERE / "families.py", root / "families.py")
    vectors, families = layer_positions(model, per_family=32, seed=11)
    sae = train_sae(vectors, features=4 * vectors.shape[1], seed=0, steps=200, l1=0.1)
    by_family = family_selectivity(sae, vectors, families).argmax(axis=1).tolist()
    dead, wired = [f for f in range(sae.w_enc.shape[1]) if f not in by_family][:2]
    grey = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        at_layer = model.activations(grey, [FAMILY_LAYER])[FAMILY_LAYER]
    w_dec = sae.w_dec.copy()
    w_dec[wired] = _class_direction(model.module, at_layer, WIRED_CLASS)
    b_enc = sae.b_enc.copy()
    b_enc[dead] = -1e4  # never fires
    save_saelens(replace(sae, w_dec=w_dec, b_enc=b_enc), root / "sae")
    other = train_sae(vectors, features=4 * vectors.shape[1], seed=1, steps=200, l1=0.1)
    save_saelens(other, root / "other")
    images, labels = family_images(8, seed=5)
    for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        folder = root / "images" / FOLDERS[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    channels = [*by_family, dead, wired]
    spec = root / "job.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [job]
            out = "{root / "out"}"
            [model]
            name = "module:families:family_network"
            checkpoint = "family.pt"
            [[layers]]
            name = "{FAMILY_LAYER}"
            sae = "sae"
            sae_compare = "other"
            channels = {channels}
            [render]
            enabled = false
            [examples]
            source = "images"
            k = {TOP}
            [interactions]
            random_directions = 0
            """
        )
    )
    result = CliRunner().invoke(main, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    (layer,) = open_store(root / "out").layers("features")
    return PlantedJob(root / "out", layer, by_family, dead, wired, (w_dec, other.w_dec))


def _page(job: PlantedJob) -> str:
    pages = (job.out / "site").glob(f"{FAMILY_LAYER}-sae*.html")
    return next(p for p in pages if p.name.count(".") == 1).read_text()  # the layer page, not the feature's


def test_a_familys_feature_has_that_familys_images_on_top_and_its_label(planted: PlantedJob) -> None:
    examples = open_store(planted.out).read("examples", planted.layer).to_pylist()
    for family, feature in enumerate(planted.by_family):
        top = [r["source_id"] for r in examples if r["channel"] == feature and r["bucket"] == "max"]
        assert len(top) == TOP
        assert {source.split("/")[0] for source in top} == {FOLDERS[family]}, (FAMILIES[family], top)
    labels = {
        int(c): json.loads(v)
        for v, c in re.findall(r"data-label='(\[[^']*\])' id=\"channel-(\d+)\"", _page(planted))
    }
    for family, feature in enumerate(planted.by_family):
        label, hits, draws, share, chance = labels[feature]
        assert (label, hits, draws, share) == (FOLDERS[family], TOP, TOP, 0.25) and chance < 1e-3


def test_a_feature_made_dead_is_listed_dead(planted: PlantedJob) -> None:
    health = re.search(r'<p class="health">(.*?)</p>', _page(planted), re.S)
    assert health is not None
    dead = re.search(r"<b>(\d+) dead</b>[^:;]*:?(.*?);", health.group(1))
    assert dead is not None
    assert f'href="#channel-{planted.dead}"' in dead.group(2)
    for feature in planted.by_family:  # the families' features fire: never dead
        assert f'href="#channel-{feature}"' not in dead.group(2)


def test_a_decoder_row_wired_to_a_class_raises_that_class_first(planted: PlantedJob) -> None:
    rows = {r["channel"]: r for r in open_store(planted.out).read("features", planted.layer).to_pylist()}
    wired = rows[planted.wired]
    assert wired["raises"][0] == WIRED_CLASS
    assert wired["raises_by"][0] > 0 and WIRED_CLASS not in wired["lowers"][:1]


def test_each_features_match_in_the_compared_sae_is_stored_and_shown(planted: PlantedJob) -> None:
    rows = open_store(planted.out).read("stability", planted.layer).to_pylist()
    expected = match_features(*planted.decoders)
    assert [r["channel"] for r in rows] == list(range(len(expected.partner)))  # every feature, not only shown
    assert [r["partner"] for r in rows] == expected.partner.tolist()
    np.testing.assert_allclose([r["cosine"] for r in rows], expected.cosine, atol=1e-5)
    np.testing.assert_allclose([r["best"] for r in rows], expected.best, atol=1e-5)
    page = _page(planted)
    line = distribution(expected.partner, expected.cosine).line()
    assert f'<p class="stability">{line}.</p>' in page.replace("&gt;", ">")
    shown = {
        int(c): json.loads(v)
        for v, c in re.findall(r"data-match='(\[[^']*\])'[^>]*id=\"channel-(\d+)\"", page)
    }
    assert sorted(shown) == sorted([*planted.by_family, planted.dead, planted.wired])
    for feature, (partner, cosine, best, best_partner) in shown.items():
        assert partner == expected.partner[feature] and best_partner == expected.best_partner[feature]
        assert cosine == pytest.approx(expected.cosine[feature], abs=1e-3) and best >= cosine - 1e-3
