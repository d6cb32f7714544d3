"""When a picture is flagged: each quality measure's threshold (no torch: the site reads these)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# A picture fails a measure when it is on the wrong side of its threshold: (direction, value).
# The share kept under the check set is judged relative to the unit's top dataset examples'
# share (natural images set the bar for what a unit tolerates); the absolute share is shown only.
THRESHOLDS: dict[str, tuple[str, float]] = {
    "robust_relative": ("min", 0.60),  # share kept over the top examples' share (scripts/calibrate_flags.py)
    "high_frequency": ("max", 0.40),  # power above half Nyquist; good <= 0.30, pixel-space >= 0.51
    "relative_activation": ("min", 1.00),  # peak over the best dataset example's peak
    "natural_path": ("min", 0.25),  # 0: as close to the top examples' path as a random photo, 1: as they are
}


def flags(record: Mapping[str, float | None]) -> list[str]:
    """The measures of ``record`` that fail their threshold; missing or NaN values never fail."""
    failed = []
    for name, (direction, limit) in THRESHOLDS.items():
        value = record.get(name)
        if value is None or not math.isfinite(value):
            continue
        if (direction == "min" and value < limit) or (direction == "max" and value > limit):
            failed.append(name)
    return failed


MAIN_PICTURE = ("channel", "neuron", "diversity")  # the picture a channel's record describes, by preference


def main_pictures(rows: Iterable[Mapping]) -> dict[int, Mapping]:
    """Channel -> its main picture among `rows` (render or quality rows: channel, objective,
    variant): the `channel` picture, else `neuron`, else the first of the diversity set."""
    main: dict[int, Mapping] = {}
    for row in rows:
        if row["objective"] not in MAIN_PICTURE or row["variant"] or row["channel"] < 0:
            continue
        held = main.get(row["channel"])
        if held is None or MAIN_PICTURE.index(row["objective"]) < MAIN_PICTURE.index(held["objective"]):
            main[row["channel"]] = row
    return main
