"""Choosing which channels get visualizations (`[[layers]] visualize`): by range, by list, or the
densest after the scan; examples and feature statistics still cover every channel, `atlas plan`
prices the job with and without the visualizations, and bad values are one line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from browsers import CHROMIUM, chromium
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.cli import main
from atlas.kinds.render import densest, densest_units, render_units
from atlas.plan.kinds import PlanInputs
from atlas.plan.spec import Densest, SpecError, load_spec, parse_spec
from atlas.plan.units import ModelFacts
from atlas.run.cost import Throughput
from atlas.run.job import job_status
from atlas.store.store import open_store

LAYER, WIDTH = "conv2", 32  # tiny-cnn's conv2


def _sae(folder: Path, features: int, seed: int = 3) -> Path:
    """A ReLU SAE of tiny-cnn's conv2 with `features` features, as a .npz file."""
    rng = np.random.default_rng(seed)
    path = folder / "sae.npz"
    np.savez(
        path,
        activation=np.array("relu"),
        W_enc=rng.normal(0, 1 / np.sqrt(WIDTH), (WIDTH, features)).astype(np.float32),
        b_enc=rng.normal(0, 0.2, features).astype(np.float32),
        W_dec=rng.normal(0, 1 / np.sqrt(features), (features, WIDTH)).astype(np.float32),
        b_dec=np.zeros(WIDTH, np.float32),
    )
    return path


def _job(folder: Path, layer: str, render: str = "") -> Path:
    spec = folder / "job.toml"
    spec.write_text(
        textwrap.dedent(
            """
            [job]
            out = "{out}"
            [model]
            name = "tiny-cnn"
            [[layers]]
            name = "conv2"
            {layer}
            [render]
            steps = 2
            size = 32
            objectives = ["channel"]
            channels_per_unit = 2
            {render}
            [examples]
            source = "demo"
            k = 2
            """
        ).format(out=folder / "out", layer=layer, render=render)
    )
    return spec


def _parse(layer: str, examples: str = "") -> tuple[int, ...] | Densest | None:
    text = f'[job]\nout = "o"\n[[layers]]\nname = "conv2"\n{layer}\n{examples}'
    return parse_spec(text, "job.toml").layers[0].visualize


@settings(deadline=None)
@given(start=st.integers(0, 500), length=st.integers(1, 300), spaces=st.sampled_from(["", " "]))
def test_a_range_is_the_channels_of_that_range(start: int, length: int, spaces: str) -> None:
    value = f"{start}{spaces}:{spaces}{start + length}"
    assert _parse(f'visualize = "{value}"') == tuple(range(start, start + length))


@settings(deadline=None)
@given(chosen=st.lists(st.integers(0, 10_000), min_size=1, max_size=30))
def test_a_list_is_those_channels_once_each_in_the_order_written(chosen: list[int]) -> None:
    assert _parse(f"visualize = {chosen}") == tuple(dict.fromkeys(chosen))


@settings(deadline=None)
@given(count=st.integers(1, 100_000), spaces=st.sampled_from(["", " "]))
def test_densest_is_a_count(count: int, spaces: str) -> None:
    assert _parse(f'visualize = "densest{spaces}:{spaces}{count}"') == Densest(count)


def test_all_and_no_key_visualize_every_channel() -> None:
    assert _parse('visualize = "all"') is None and _parse("") is None


BAD = [
    'visualize = "densest:0"',
    'visualize = "densest:"',
    'visualize = "densest:-3"',
    'visualize = "densest"',
    'visualize = "densest:2.5"',
    'visualize = "5:2"',
    'visualize = "3:3"',
    'visualize = "0:"',
    'visualize = "some"',
    "visualize = []",
    "visualize = [-1, 2]",
    "visualize = [1.5]",
    "visualize = [true]",
    "visualize = 7",
    'channels = "0:4"\nvisualize = [2, 9]',  # not among the entry's channels
]


@pytest.mark.parametrize("line", BAD)
def test_a_bad_choice_names_the_key_its_line_and_the_forms(line: str) -> None:
    with pytest.raises(SpecError, match=r"job.toml, line \d+: layers.visualize: ") as caught:
        _parse(line)
    message = str(caught.value)
    assert "\n" not in message
    assert any(fix in message for fix in ("densest:N", "chosen from `channels`", "must be >= 0"))


def test_densest_without_the_scan_says_to_enable_examples() -> None:
    with pytest.raises(SpecError, match=r"layers.visualize: .*enable \[examples\]"):
        _parse('visualize = "densest:3"', "[examples]\nenabled = false")


@settings(max_examples=60, deadline=None)
@given(
    density=st.dictionaries(st.integers(0, 400), st.sampled_from([0.0, 0.01, 0.25, 0.5, 1.0]), min_size=1),
    data=st.data(),
)
def test_the_densest_are_never_less_dense_than_one_left_out(density: dict[int, float], data) -> None:
    count = data.draw(st.integers(1, len(density)))
    chosen = densest(density, count)
    assert len(chosen) == count and list(chosen) == sorted(chosen)
    left = set(density) - set(chosen)
    for channel in chosen:  # ties go to the lower channel
        assert all((density[channel], -channel) > (density[other], -other) for other in left)


@settings(max_examples=30, deadline=None)
@given(width=st.integers(2, 60), per_unit=st.integers(1, 9), data=st.data())
def test_renders_are_planned_for_the_chosen_channels_only(width: int, per_unit: int, data) -> None:
    chosen = data.draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width, unique=True))
    count = data.draw(st.integers(1, width))
    text = textwrap.dedent(
        f"""
        [job]
        out = "o"
        [[layers]]
        name = "a"
        visualize = {chosen}
        [[layers]]
        name = "b"
        visualize = "densest:{count}"
        [render]
        channels_per_unit = {per_unit}
        """
    )
    spec = parse_spec(text, "job.toml")
    facts = ModelFacts("digest", {"a": width, "b": width})
    first = render_units(spec, facts, PlanInputs())
    assert {u.layer for u in first} == {"a"} and all(len(u.channels) <= per_unit for u in first)
    assert [c for u in first for c in u.channels] == chosen
    rates = data.draw(st.lists(st.floats(0, 1), min_size=width, max_size=width))
    partly = {"b": dict(enumerate(rates[:-1]))}
    assert densest_units(spec, facts, partly) == []  # one channel's density is not known yet
    later = densest_units(spec, facts, {"b": dict(enumerate(rates))})
    assert [c for u in later for c in u.channels] == list(densest(dict(enumerate(rates)), count))
    # a channel chosen by both ways has one content key: a unit computed once serves both
    same = render_units(parse_spec(text.replace('name = "b"', 'name = "c"'), "job.toml"), facts, PlanInputs())
    assert [u.key for u in same] == [u.key for u in first]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ('visualize = "densest:65"', 'asks for more than the 64 channels of layer "conv2@sae'),
        ('channels = "0:8"\nvisualize = "densest:9"', "more than the 8 channels"),
        ("visualize = [3, 64]", "[64] out of range"),
    ],
)
def test_a_choice_beyond_the_layer_is_one_error_line(tmp_path: Path, layer: str, message: str) -> None:
    _sae(tmp_path, 64)
    result = CliRunner().invoke(main, ["plan", str(_job(tmp_path, f'sae = "sae.npz"\n{layer}'))])
    assert result.exit_code == 2, result.output
    (line,) = [text for text in result.output.splitlines() if text]
    assert line.startswith("Error: ") and "layers.visualize" in line and message.replace('"', "'") in line


def test_plan_prices_the_job_with_and_without_visualizations(tmp_path: Path) -> None:
    _sae(tmp_path, 16)
    Throughput("test device", "tiny-cnn", 1000.0, 1.0).save(tmp_path / "speed.json")
    job = _job(tmp_path, 'sae = "sae.npz"\nvisualize = "densest:5"')
    result = CliRunner().invoke(main, ["plan", str(job), "--throughput", str(tmp_path / "speed.json")])
    assert result.exit_code == 0, result.output
    # 5 densest features in units of 2: 3 render units of 2 steps a picture at 1 image-step/s
    assert "+ 3 render units of the densest channels, chosen after the scan" in result.output
    lines = result.output.splitlines()
    every = next(line for line in lines if "units left: estimated" in line)
    bare = next(line for line in lines if line.startswith("without visualizations"))
    assert "render 0.00278" in every and "render" not in bare  # 10 image-steps = 10 s
    hours = [float(text.split("estimated ")[1].split(" ")[0]) for text in (every, bare)]
    assert hours[0] == pytest.approx(hours[1] + 10 / 3600, rel=0.01)


def test_a_job_visualizes_its_densest_features_and_scans_them_all(tmp_path: Path) -> None:
    _sae(tmp_path, 24)
    job = _job(tmp_path, 'sae = "sae.npz"\nchannels = "0:12"\nvisualize = "densest:3"')
    result = CliRunner().invoke(main, ["run", str(job), "--no-site"])
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "out")
    (layer,) = store.layers("examples")
    histogram = store.read("histogram", layer).to_pydict()
    assert sorted(histogram["channel"]) == list(range(12))  # statistics of every chosen feature
    assert sorted(store.read("features", layer).column("channel").to_pylist()) == list(range(12))
    density = dict(zip(histogram["channel"], histogram["active"], strict=True))
    rendered = sorted(set(store.read("render", layer).column("channel").to_pylist()))
    assert rendered == list(densest(density, 3))
    trusted = store.read("trust", layer)  # the densest renders are judged like any render
    assert sorted(trusted.column("channel").to_pylist()) == rendered
    assert len(set(density.values())) > 3  # the choice is a real one: densities differ
    # the dashboard of an SAE layer: a share of images beside the share of positions, never below
    # it (a position fires only in an image that fires), and quantile groups in every firing feature
    images = dict(zip(histogram["channel"], histogram["images_active"], strict=True))
    assert all(density[c] <= images[c] <= 1 for c in density)
    quantiles = [r for r in store.read("examples", layer).to_pylist() if r["bucket"] == "quantile"]
    assert {r["channel"] for r in quantiles} == {c for c in density if images[c] > 0}
    status = job_status(load_spec(job))  # the densest renders count as the job's own units
    assert not status["pending"] and not status["stale"]
    assert sum(label.startswith("render ") for label in status["done"]) == 2  # 3 features in units of 2
    again = CliRunner().invoke(main, ["plan", str(job)])
    assert "0 to compute" in again.output and "densest" not in again.output
    built = CliRunner().invoke(main, ["site", str(tmp_path / "out")])
    assert built.exit_code == 0, built.output
    site = tmp_path / "out" / "site"
    layer_page = next(p for p in site.glob("conv2-sae*.html") if p.name.count(".") == 1)  # not the index
    page = layer_page.read_text()
    assert f'href="{layer_page.stem}.features.html"' in page
    assert page.count("data-images-active=") == 12 and "data-quantile='[" in page
    details = next(site.glob("img/conv2-sae*/details.js")).read_text()
    found = json.loads(details.strip().splitlines()[-1].split(" = ", 1)[1].rstrip(";"))
    shown = {int(c): d["quantiles"] for c, d in found.items() if "quantiles" in d}
    assert set(shown) == {r["channel"] for r in quantiles}
    for channel, groups in shown.items():  # the channel view's groups are the stored ones
        stored = sorted((r["rank"], r["source_id"]) for r in quantiles if r["channel"] == channel)
        assert sorted((e[0], e[2]) for e in groups["examples"]) == stored
        rows = store.read("examples", layer).to_pylist()
        best = next(
            r["activation"] for r in rows if (r["channel"], r["bucket"], r["rank"]) == (channel, "max", 0)
        )
        assert groups["top"] == pytest.approx(best) and all(e[1] <= groups["top"] for e in groups["examples"])
    feature_page = site / f"{layer_page.stem}.feature.html"  # each feature alone: a shared page
    files = {int(f.stem): f for f in site.glob(f"img/{layer_page.stem}/f/*.js")}  # + a file each
    assert sorted(files) == list(range(12))
    assert all(f.stat().st_size < 300_000 for f in files.values())
    for number, file in files.items():  # a feature's file holds its row of the layer page
        feature, row, extra = json.loads(file.read_text().split(".apply(null, ", 1)[1].rstrip(");\n"))
        assert feature == number and f'id="channel-{number}"' in row and f'id="channel-{number}"' in page
        assert extra.get("quantiles") == shown.get(number)
    if CHROMIUM.exists():  # the channel view draws the groups: ten rows, one tile per example
        channel, groups = max(shown.items(), key=lambda item: len(item[1]["examples"]))
        url = layer_page.as_uri() + f"#channel-{channel}"
        with chromium() as browser:
            page = browser.new_page()
            errors: list[str] = []
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector("#channel-view .quantiles .tile")
            assert page.locator("#channel-view .quantile-group").count() == 10
            assert page.locator("#channel-view .quantiles .tile").count() == len(groups["examples"])
            assert "of the images" in page.locator("#channel-view").inner_text()
            own_page = page.locator("#channel-view a", has_text="on its own page")
            assert own_page.get_attribute("href") == f"{feature_page.name}#channel-{channel}"
            assert not errors
            _feature_page_loads_one_feature_at_a_time(browser, feature_page, channel, len(groups["examples"]))
            index = browser.new_page()  # the feature index: every feature, and each search narrows it
            index.on("pageerror", lambda error: errors.append(str(error)))
            index.goto(next(site.glob("conv2-sae*.features.html")).as_uri())
            index.wait_for_selector("#feature-results tr")
            assert index.locator("#feature-results tr").count() == 12
            first = index.locator("#feature-results tr a").first.get_attribute("href")
            assert first == f"{feature_page.name}#channel-0"  # the index opens a feature on its own
            ranked = sorted(set(density.values()))
            cut = (ranked[-4] + ranked[-5]) / 2  # between two densities: rounding cannot cross it
            for query, expected in [
                ("7", [7]),
                (f">{cut:.6g}", sorted(c for c, v in density.items() if v > cut)),
                (f"images<{1e-9}", sorted(c for c, v in images.items() if v < 1e-9)),
            ]:
                index.fill("#feature-search", query)
                shown_rows = index.locator("#feature-results tr td:first-child").all_inner_texts()
                assert [int(text.lstrip("#")) for text in shown_rows] == expected, query
            assert not errors


def _feature_page_loads_one_feature_at_a_time(browser, feature_page: Path, channel: int, tiles: int) -> None:
    """An SAE feature's own page: besides the page, its stylesheet and script (shared by every
    feature), a feature costs two requests, its file and its sprite, under 300 KB together; the
    next feature is two more, and a number outside the layer says so."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    shared = {feature_page.name, "atlas.css", "atlas.js"}

    def own() -> list[Path]:
        paths = [Path(url.removeprefix("file://")) for url in requested]
        return [p for p in paths if p.name not in shared]

    page.goto(feature_page.as_uri() + f"#channel-{channel}")
    page.wait_for_selector("#channel-view .quantiles .tile")
    assert page.locator("#channel-view-title").inner_text() == f"Feature {channel}"
    assert page.locator("#channel-view .quantiles .tile").count() == tiles
    loaded = own()
    assert sorted((p.parent.name, p.stem) for p in loaded) == sorted(
        [("f", str(channel)), (feature_page.stem.split(".")[0], str(channel))]
    ), loaded
    assert sum(p.stat().st_size for p in loaded) < 300_000
    step = 1 if channel < 11 else -1
    requested.clear()
    page.click("#channel-view a.next" if step > 0 else "#channel-view a.prev")
    page.wait_for_function(
        f"document.getElementById('channel-view-title').textContent === 'Feature {channel + step}'"
    )
    assert page.locator("article.ch").count() == 1  # the page holds the feature shown, no other
    assert len(own()) == 2
    page.fill("#jump", "99")
    page.dispatch_event("#jump", "change")
    page.wait_for_function(
        "document.getElementById('filter-status').textContent.includes('not in this layer')"
    )
    assert not errors
