"""Stability of an SAE layer's features across SAEs (the `stability` table, atlas.kinds.stability):
per feature its one-to-one match in the other SAE, per layer the distribution of match cosines.

The layer page gets a section (a registered view of the `stability` kind) with the distribution;
each feature's channel view gets one line (`data-match`). `atlas sae-match` prints the same line.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atlas.site.views import register_view
from atlas.store.store import Store

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
STABLE, RELATED = 0.9, 0.7  # the cosines whose shares are reported
COLUMNS = ["channel", "partner", "cosine", "best", "best_partner"]


@dataclass(frozen=True)
class Distribution:
    """Match cosines of one SAE's features in another: quantiles over the matched features,
    shares over every feature (an unmatched one counts as below every threshold)."""

    features: int
    matched: int
    quantiles: dict[float, float]
    stable: float  # share of features matched with cosine >= STABLE
    related: float  # share matched with cosine >= RELATED

    def line(self) -> str:
        quantiles = ", ".join(f"q{round(100 * q)} {v:.3f}" for q, v in self.quantiles.items())
        return (
            f"{self.matched} of {self.features} features matched one to one by decoder cosine "
            f"({quantiles}); {100 * self.stable:.1f}% at cosine >= {STABLE}, "
            f"{100 * self.related:.1f}% at >= {RELATED}"
        )


def distribution(partner: Sequence[int], cosine: Sequence[float]) -> Distribution:
    """The distribution of the match cosines of features with these partners (-1: unmatched)."""
    partner, cosine = np.asarray(partner), np.asarray(cosine, np.float64)
    matched = cosine[partner >= 0]
    quantiles = {q: float(np.quantile(matched, q)) for q in QUANTILES} if len(matched) else {}
    count = max(len(partner), 1)
    return Distribution(
        len(partner),
        len(matched),
        quantiles,
        float((matched >= STABLE).sum() / count),
        float((matched >= RELATED).sum() / count),
    )


def read_stability(store: Store, layer: str) -> dict[int, list]:
    """Feature -> [partner (-1: unmatched), cosine, best cosine, best partner], for the channel view."""
    table = store.read("stability", layer, COLUMNS)
    if table is None:
        return {}
    return {
        row["channel"]: [
            row["partner"],
            round(float(row["cosine"]), 3),
            round(float(row["best"]), 3),
            row["best_partner"],
        ]
        for row in table.to_pylist()
    }


def _section(store: Store, layer: str, keys: Sequence[str]) -> str | None:
    table = store.read("stability", layer, ["partner", "cosine"])
    if table is None or not table.num_rows:
        return None
    found = distribution(table.column("partner").to_pylist(), table.column("cosine").to_pylist())
    return f'<p class="stability">{html.escape(found.line())}.</p>'


register_view("stability", "Stability across SAEs", _section)
