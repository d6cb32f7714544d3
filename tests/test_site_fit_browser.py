"""Pages that fit the window and explain their numbers, in a real browser at 1024, 1280 and 1920 px.

The store is the wide case: 24 examples a bucket and 8 diversity images, so a row at full height
is wider than a 1280 px window; a timeline of five checkpoints where only the last two were
rendered; a channel whose bottom examples all tie at 0, as on a ReLU layer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browsers import CHROMIUM, chromium
from synthetic import SyntheticLayer, SyntheticOptions, write_synthetic_store
from synthetic_timeline import write_synthetic_timeline

from atlas.site import build_site

pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

WIDTHS = (1024, 1280, 1920)
TIED = 2  # the channel whose bottom examples all tie at 0

# For each visible cell of the first channel row: [left, right], and each column heading's text box.
COLUMNS = """() => {
  const visible = (e) => e.offsetParent !== null && getComputedStyle(e).display !== 'none';
  const row = document.querySelector('article.ch');
  const heads = document.querySelector('.row.colheads');
  const out = [];
  Array.from(heads.children).filter(visible).forEach((head) => {
    const kind = Array.from(head.classList).find((c) => c.startsWith('k-'));
    const cell = row.querySelector('.cell.' + kind);
    const label = Array.from(head.querySelectorAll('span')).find(visible) || head;
    const range = document.createRange();
    range.selectNodeContents(label);
    const text = range.getBoundingClientRect();
    const box = cell.getBoundingClientRect();
    out.push({kind, left: box.left, right: box.right, textLeft: text.left, textRight: text.right});
  });
  const list = document.querySelector('.channels').getBoundingClientRect();
  return {cells: out, listRight: list.right, overflow: document.documentElement.scrollWidth - innerWidth};
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit")
    options = SyntheticOptions(
        image_size=64, crop_size=48, examples_k=24, diversity=8, channels_per_unit=8, zero_bottom=(TIED,)
    )
    write_synthetic_store(out, [SyntheticLayer("mixed3a", 12), SyntheticLayer("mixed4a", 8, 7, 7)], options)
    digest = json.loads((out / "job.json").read_text())["model_digest"]
    write_synthetic_timeline(
        out, "mixed4a", checkpoints=5, channels=8, latest_digest=digest, scanned=(0,), rendered=(3, 4)
    )
    return build_site(out).parent


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("view", ["appendix", "spectrum"])
def test_rows_fit_the_window_and_each_heading_sits_over_its_column(
    browser, site: Path, width: int, view: str
) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto((site / "mixed3a.html").as_uri())
    page.click(f"button[data-view={view}]")
    seen = page.evaluate(COLUMNS)
    assert seen["overflow"] <= 0
    kinds = [c["kind"] for c in seen["cells"]]
    assert ("k-slightly-negative" in kinds) == (view == "spectrum") and len(kinds) >= 6
    for column in seen["cells"]:
        assert column["right"] <= seen["listRight"] + 0.5, column  # the last column is on screen
        assert column["left"] - 0.5 <= column["textLeft"] and column["textRight"] <= column["right"] + 0.5, (
            column
        )
    page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_filmstrip_labels_sit_over_and_under_their_pictures(browser, site: Path, width: int) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto((site / "mixed4a.timeline.3.html").as_uri())
    columns = page.evaluate("""() => Array.from(document.querySelectorAll('.tl-strip thead th')).slice(1)
        .map((th) => { const r = th.getBoundingClientRect(); return [r.left, r.right]; })""")
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('.tl-strip tbody tr')).map((tr) =>
        Array.from(tr.querySelectorAll('td')).map((td) => {
          const picture = td.querySelector('img, .tl-blank').getBoundingClientRect();
          const label = td.querySelector('small');
          const under = label ? label.getBoundingClientRect() : null;
          return {left: picture.left, right: picture.right, bottom: picture.bottom,
                  label: under && {left: under.left, right: under.right, top: under.top},
                  blank: td.querySelector('.tl-blank') ? td.querySelector('.tl-blank').textContent : ''};
        }))""")
    assert len(columns) == 5 and len(rows) == 3
    assert [cell["blank"] for cell in rows[0]] == ["not rendered"] * 3 + ["", ""]
    assert [cell["blank"] for cell in rows[2]] == ["", "not scanned", "not scanned", "not scanned", ""]
    for row in rows:
        for (head_left, head_right), cell in zip(columns, row, strict=True):
            centre = (cell["left"] + cell["right"]) / 2
            assert head_left <= centre <= head_right  # the checkpoint's label is over its picture
            if cell["label"]:
                assert 0 <= cell["label"]["top"] - cell["bottom"] <= 12  # the match's number under it
                assert (
                    cell["left"] - 1
                    <= (cell["label"]["left"] + cell["label"]["right"]) / 2
                    <= cell["right"] + 1
                )
    page.close()


def test_the_channel_view_defines_its_numbers_and_explains_each_figure(browser, site: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((site / "mixed3a.html").as_uri())
    flagged = page.locator("article.ch[data-flags]").first.get_attribute("id")
    page.goto((site / "mixed3a.html").as_uri() + "#" + flagged)
    view = page.locator("#channel-view")
    assert "strongest position" in view.locator(".defs").inner_text()
    captions = view.locator("figure.single figcaption").all_inner_texts()
    assert captions and all(" · peak " in caption for caption in captions)
    # the relative activation divides the main picture's peak by the best top example's peak
    peak = float(view.locator("figure.single figcaption").first.inner_text().split(" · peak ")[1].split()[0])
    best = float(page.locator(f"#{flagged} .k-max img").get_attribute("data-v").split()[0])
    record = json.loads(page.locator(f"#{flagged}").get_attribute("data-q"))
    assert record["relative_activation"] == pytest.approx(peak / best, rel=0.01)
    rows = view.locator("table.quality tr")
    texts = rows.all_inner_texts()
    assert len(texts) >= 5 and all(
        rows.nth(i).locator("td.meaning").inner_text().strip() for i in range(len(texts))
    )
    failing = [i for i, text in enumerate(texts) if "fails" in text]
    assert failing and failing == list(range(len(failing)))  # what fails comes first
    assert all(rows.nth(i).locator(".advice").count() == 1 for i in failing)
    assert any("no threshold" in text and "0.5 is chance" in text for text in texts)
    sources = view.locator(".sources li").evaluate_all("items => items.map(i => i.textContent)")  # folded
    assert sources and all(text.startswith("synthetic/") for text in sources)
    page.close()


def test_bottom_examples_that_all_tie_at_zero_are_named_not_shown(browser, site: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto((site / "mixed3a.html").as_uri() + f"#channel-{TIED}")
    cell = page.locator(f"#channel-{TIED} .k-min")
    assert cell.get_attribute("data-tie") == "0" and "all 24 tie at 0" in cell.inner_text()
    assert not cell.locator("img").is_visible()
    figure = page.locator("#channel-view figure.tied")
    assert figure.count() == 1 and "arbitrary" in figure.inner_text()
    assert figure.locator("img").count() == 0
    untied = page.locator(f"#channel-{TIED + 1} .k-min")
    assert untied.get_attribute("data-tie") is None and untied.locator("img").is_visible()
    page.close()
