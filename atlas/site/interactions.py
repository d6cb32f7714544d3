"""The interactions section of a layer (the article's "Interaction between Neurons").

Random directions in activation space (their optimized image and dataset examples) are shown
beside basis channels, and chosen channel pairs with their joint optimization and the
interpolation strip between them. The rows come from `channels.read_layer`, which already
separated them from the per-channel rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from atlas.site.channels import BUCKETS
from atlas.site.images import LayerImages, Picture, SheetPicture


@dataclass
class Direction:
    """One random direction: its optimized image and its dataset examples per bucket."""

    direction: int
    label: str = ""
    picture: Picture | None = None
    reached: float = float("nan")
    examples: dict[str, SheetPicture] = field(default_factory=dict)


@dataclass
class Pair:
    """Two channels optimized jointly, and the interpolation between them."""

    a: int
    b: int
    label: str = ""
    joint: Picture | None = None
    interpolation: SheetPicture | None = None


@dataclass
class Interactions:
    directions: list[Direction]
    pairs: list[Pair]


def read_interactions(
    renders: pa.Table | None, direction_examples: pa.Table | None, images: LayerImages
) -> Interactions | None:
    """Write the images of directions and pairs; None when the layer has no interaction rows."""
    directions: dict[int, Direction] = {}
    pairs: dict[tuple[int, int], Pair] = {}
    frames: dict[tuple[int, int], dict[int, bytes]] = defaultdict(dict)
    for row in renders.to_pylist() if renders is not None else []:
        objective, variant = row["objective"], int(row["variant"])
        if objective == "direction":
            found = directions.setdefault(variant, Direction(variant))
            found.label = row["label"] or f"direction {variant}"
            found.picture = images.write(f"direction-{variant}", row["image"])
            found.reached = float("nan") if row["activation"] is None else float(row["activation"])
            continue
        key = (int(row["channel"]), int(row["channel_b"]))
        pair = pairs.setdefault(key, Pair(*key))
        if objective == "pair":
            pair.label = row["label"] or f"{key[0]} + {key[1]}"
            pair.joint = images.write(f"pair-{key[0]}-{key[1]}", row["image"])
        else:
            frames[key][variant] = row["image"]
    for key, by_step in frames.items():
        steps = sorted(by_step)
        pairs[key].interpolation = images.write_sheet(
            f"pair-{key[0]}-{key[1]}-interpolation", [by_step[s] for s in steps], steps, len(steps)
        )
    _attach_direction_examples(direction_examples, directions, images)
    if not directions and not pairs:
        return None
    return Interactions(
        directions=[directions[d] for d in sorted(directions)],
        pairs=[pairs[k] for k in sorted(pairs)],
    )


def _attach_direction_examples(
    table: pa.Table | None, directions: dict[int, Direction], images: LayerImages
) -> None:
    """Examples rows with channel -1 - d belong to direction d."""
    if table is None:
        return
    groups: dict[tuple[int, str], dict[int, tuple[bytes, float]]] = defaultdict(dict)
    for row in table.to_pylist():
        if row["bucket"] in BUCKETS:
            groups[(-1 - int(row["channel"]), row["bucket"])][int(row["rank"])] = (
                row["crop"],
                row["activation"],
            )
    for (direction, bucket), by_rank in sorted(groups.items()):
        ranked = [by_rank[r] for r in sorted(by_rank)]
        target = directions.setdefault(direction, Direction(direction, f"direction {direction}"))
        target.examples[bucket] = images.write_sheet(
            f"direction-{direction}-{bucket.replace('_', '-')}",
            [crop for crop, _ in ranked],
            [float("nan") if value is None else value for _, value in ranked],
        )
