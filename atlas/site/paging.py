"""Layer pages in pages: a transformer layer has thousands of units, a page shows PAGE_SIZE.

A ViT-L block has 4,096 MLP units; one HTML page with every row would weigh ~10 MB before any
image. Each page holds a run of channels, the first keeps the layer's plain address
(``<slug>.html``) and every page lists every page's channel range, so a link to any channel of
the layer (``<slug>.html#channel-N``) lands on the right page (atlas.js follows the ranges).
The same ranges feed the index's search across the whole atlas (``search.js``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = 256
SEARCH_FILE = "search.js"


@dataclass(frozen=True)
class Page:
    """One page of a layer: its file and the first and last channel it shows."""

    href: str
    first: int
    last: int


def page_href(slug: str, number: int) -> str:
    """The first page keeps the layer's address; later ones are ``<slug>.p<number>.html`` (1-based)."""
    return f"{slug}.html" if number == 0 else f"{slug}.p{number + 1}.html"


def split(channels: Sequence[int], slug: str, size: int = PAGE_SIZE) -> list[tuple[Page, slice]]:
    """Consecutive runs of at most ``size`` channels (in page order) and their slices."""
    if not channels:
        return [(Page(page_href(slug, 0), -1, -1), slice(0, 0))]
    pages = []
    for number, start in enumerate(range(0, len(channels), size)):
        part = slice(start, min(start + size, len(channels)))
        pages.append((Page(page_href(slug, number), channels[part.start], channels[part.stop - 1]), part))
    return pages


def ranges(pages: Sequence[Page]) -> list[list]:
    """[[first, last, href], ...]: what atlas.js reads to find the page of a channel."""
    return [[page.first, page.last, page.href] for page in pages if page.first >= 0]


def write_search(path: Path, layers: Sequence[tuple[str, str, int, Sequence[Page]]]) -> None:
    """The index's search data: per layer its name, slug, channel count and page ranges.

    A script (file:// has no fetch), a few bytes per page rather than per unit: an atlas of
    100,000 units in 400 pages stays small.
    """
    data = [[name, slug, count, ranges(pages)] for name, slug, count, pages in layers]
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    path.write_text(f"window.atlasSearch = {text};\n", encoding="utf-8")
