"""Per layer of a finished atlas: how many pictures fail the quality thresholds, and the spread of
the 2AFC interpretability proxy (from optimized images and from top examples).

    python scripts/quality_report.py [atlas-out/demo]

Medians with the quartiles in brackets; "above chance" counts channels whose proxy interval lies
wholly above 0.5. A store written before render units kept a quality record shows only the proxy.
"""

from __future__ import annotations

import argparse
import statistics

from atlas.quality import THRESHOLDS, flags
from atlas.site.layer_quality import layer_records
from atlas.store.store import Store

COLUMNS = (
    "relative_activation",
    "robust_relative",
    "natural_path",
    "robust_activation",
    "high_frequency",
    "diversity_similarity",
)


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) < 2:
        return f"{values[0]:.2f}"
    low, median, high = statistics.quantiles(values, n=4, method="inclusive")
    return f"{median:.2f} [{low:.2f}, {high:.2f}]"


def proxy_cell(records: list[dict], key: str) -> str:
    scored = [r for r in records if key in r]
    above = sum(r[f"{key}_interval"][0] > 0.5 for r in scored)
    return f"{spread([r[key] for r in scored])}, {above}/{len(scored)} above chance"


def main(out: str = "atlas-out/demo") -> None:
    store = Store(out)
    layers = [layer["name"] for layer in store.job().get("layers", [])] or store.layers("render")
    limits = ", ".join(f"{name} {'>=' if d == 'min' else '<='} {v}" for name, (d, v) in THRESHOLDS.items())
    print(f"thresholds: {limits}\n")
    header = ["layer", "channels", "flagged", *COLUMNS, "2AFC optimized", "2AFC examples"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for layer in layers:
        records = list(layer_records(store, layer).values())
        cells = [layer, str(len(records)), str(sum(bool(flags(r)) for r in records))]
        cells += [spread([r[c] for r in records if c in r]) for c in COLUMNS]
        cells += [proxy_cell(records, "proxy_optimized"), proxy_cell(records, "proxy_examples")]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", default="atlas-out/demo", help="a built atlas's output folder")
    main(parser.parse_args().out)
