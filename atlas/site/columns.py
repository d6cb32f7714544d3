"""The columns of a channel row: each optimized objective and each dataset-example bucket.

The run writes them into job.json (`atlas_columns`, from the objective registry), and the site
reads them back from there (`job_columns`), so a site is built with the columns of the code that
made the atlas, even where a plugin objective is not installed. Order follows the appendix of
the article: positive optimized images beside the top examples, negative ones beside the bottom.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

ColumnKind = Literal["optimized", "diverse", "examples"]
KINDS = get_args(ColumnKind)
_NAME = re.compile(r"[a-z0-9_]{1,40}")  # a column name becomes a CSS class and a file name part


@dataclass(frozen=True)
class Column:
    """`labels`: the heading in the appendix view, in the spectrum view, and on narrow screens."""

    name: str
    kind: ColumnKind
    labels: tuple[str, str, str]
    side: Literal["positive", "negative"] = "positive"


TOP = Column("max", "examples", ("Top examples", "Maximum", "top"))
BOTTOM = Column("min", "examples", ("Bottom examples", "Minimum", "bottom"), "negative")
SLIGHTLY = [
    Column(
        "slightly_negative", "examples", ("Slightly negative", "Slightly negative", "slightly −"), "negative"
    ),
    Column("slightly_positive", "examples", ("Slightly positive", "Slightly positive", "slightly +")),
]


def atlas_columns() -> list[Column]:
    """Every registered per-channel objective and the example buckets, in row order."""
    from atlas.optvis.named import OBJECTIVES

    objectives = [
        Column(name, "diverse" if kind.diverse else "optimized", (*kind.labels, name), kind.side)
        for name, kind in OBJECTIVES.items()
        if kind.per_channel
    ]
    positive = [c for c in objectives if c.side == "positive"]
    negative = [c for c in objectives if c.side == "negative"]
    return [*positive, TOP, *negative, BOTTOM, *SLIGHTLY]


def columns_json(columns: list[Column]) -> list[dict[str, Any]]:
    return [asdict(column) for column in columns]


def job_columns(job: dict) -> list[Column]:
    """The columns job.json records; a job.json written before columns were recorded gets
    today's. Entries that are not well-formed are dropped: nothing unchecked names a file."""
    recorded = job.get("columns")
    if not isinstance(recorded, list):
        return atlas_columns()
    columns = []
    for item in recorded:
        try:
            column = Column(
                str(item["name"]),
                item["kind"],
                tuple(str(label) for label in item["labels"]),  # type: ignore[arg-type]
                item.get("side", "positive"),
            )
        except (KeyError, TypeError):
            continue
        if _NAME.fullmatch(column.name) and column.kind in KINDS and len(column.labels) == 3:
            columns.append(column)
    return columns
