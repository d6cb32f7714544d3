"""Label enrichment: which label is over-represented among a unit's top dataset images.

A folder dataset laid out as ImageFolder (`<label>/<image>`) names each image's label, and so
do Parquet rows read with a label column (`<label>/<file>#row<i>`); the job records how many
images each label has (job.json `labels`). Rows without a label are `(none)` (UNLABELLED): they
count in the dataset (the population the top images are drawn from) but are never reported (an
ImageFolder folder named `(none)` reads the same). For a unit's top examples, the label with the
smallest chance of turning up that often by luck is reported with that chance: the upper tail of
the hypergeometric distribution (drawing the examples without replacement from the dataset),
exact, no scipy. Torch-free: the site computes it from the store and job.json.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from atlas.data.source import UNLABELLED


def label_of(source_id: str) -> str | None:
    """The label of an ImageFolder source id (`<label>/<file>`); None for a file at the top."""
    head, _, rest = source_id.partition("/")
    return head if rest else None


def label_counts(source_ids: Sequence[str]) -> dict[str, int]:
    """Images per label (unlabelled rows as `(none)`), when every image sits in a label folder and
    there are two real labels or more."""
    labels = [label_of(i) for i in source_ids]
    if not labels or None in labels:
        return {}
    counts = Counter(labels)
    return dict(sorted(counts.items())) if len(counts.keys() - {UNLABELLED}) > 1 else {}


def upper_tail(hits: int, draws: int, successes: int, population: int) -> float:
    """P(X >= hits) for X hypergeometric: `draws` from `population` holding `successes`."""
    total = math.comb(population, draws)
    top = min(draws, successes)
    tail = sum(
        math.comb(successes, x) * math.comb(population - successes, draws - x) for x in range(hits, top + 1)
    )
    return tail / total


def enrichment(
    top_ids: Sequence[str], counts: Mapping[str, int]
) -> tuple[str, int, int, float, float] | None:
    """(label, hits among the top images, top images, the label's share of the dataset, the
    chance of at least that many hits), for the most significant label; None without labels.
    Unlabelled images count in the population and the draws but are never the answer."""
    population = sum(counts.values())
    labels = [label_of(i) for i in top_ids]
    seen = Counter(label for label in labels if label in counts and label != UNLABELLED)
    if not population or not seen:
        return None
    draws = len(labels)
    scored = [
        (upper_tail(hits, draws, counts[label], population), label, hits) for label, hits in seen.items()
    ]
    chance, label, hits = min(scored)
    return label, hits, draws, counts[label] / population, chance


def top_labels(channels: Sequence[Any], counts: Mapping[str, int]) -> dict[int, list]:
    """Channel -> [label, hits, top images, dataset share, chance] of its top examples (`max`)."""
    if not counts:
        return {}
    found = {}
    for entry in channels:
        top = [source[0] for source in entry.sources.get("max", [])]
        best = enrichment(top, counts)
        if best is not None:
            label, hits, draws, share, chance = best
            found[entry.channel] = [label, hits, draws, round(share, 4), float(f"{chance:.3g}")]
    return found
