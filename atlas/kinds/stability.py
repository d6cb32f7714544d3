"""Stability of SAE features: which features of one SAE another SAE of the same layer also learned.

Two SAEs of one layer (two seeds, two checkpoints, two sizes K1 and K2) are compared by the
cosine of their decoder rows. Features are matched one to one by an optimal assignment that
maximizes the total cosine:

- **dense** (K1 x K2 at most `DENSE_MAX` cosines): the Hungarian method on the whole cosine
  matrix (`scipy.optimize.linear_sum_assignment`); min(K1, K2) pairs, the rest unmatched;
- **sparse** (larger, e.g. 49,152 x 49,152, whose dense matrix would take 9.7 GB): each feature's
  `candidates` most similar features on the other side, both ways, found a block of rows at a
  time (memory `BLOCK` x K2), make a sparse graph solved by LAPJVsp
  (`scipy.sparse.csgraph.min_weight_full_bipartite_matching`). Every feature of the first SAE
  also has an edge to its own "unmatched" vertex, dearer than any path of real pairs could save,
  so a full matching always exists: as many features are matched as the candidate pairs allow,
  and among such matchings the total cosine is largest. On a complete graph this is the dense
  answer.

Each feature of the first SAE gets its partner (-1: unmatched), the partner's cosine (an
unmatched feature: its best cosine) and its best cosine over every feature of the second SAE.
`[[layers]] sae_compare = "path"` beside `sae` makes a `stability` unit of the layer: one row
per feature of the layer's SAE (docs/STORE.md); `atlas sae-match A B` prints the distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from atlas.core.schema import STABILITY_SCHEMA, keyed_table
from atlas.kinds.context import UnitFailed, WorkerContext
from atlas.plan.kinds import PlanInputs, Speed, register_kind
from atlas.plan.layer_names import base_layer
from atlas.plan.sae import SaeError, load_sae, sae_digest
from atlas.plan.spec import JobSpec
from atlas.plan.units import ModelFacts, Unit, make_unit
from atlas.plan.work import Work

DENSE_MAX = 4096 * 4096  # cosines of the largest dense assignment (64 MiB of float32)
CANDIDATES = 8  # partners per feature, each way, in the sparse graph
BLOCK = 2048  # rows of the cosine matrix held at once on the sparse path


@dataclass(frozen=True)
class Matching:
    """The first SAE's features matched to the second's, one row per feature of the first."""

    partner: np.ndarray  # (K1,) int64, the matched feature of the second SAE; -1 unmatched
    cosine: np.ndarray  # (K1,) float32, the partner's cosine; an unmatched feature's best cosine
    best: np.ndarray  # (K1,) float32, the highest cosine with any feature of the second SAE
    best_partner: np.ndarray  # (K1,) int64, the feature of that cosine
    method: str  # "dense" | "sparse"

    @property
    def matched(self) -> np.ndarray:
        return self.partner >= 0


def _unit(rows: np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(rows, np.float32))
    return tensor / tensor.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or b.ndim != 2 or not len(a) or not len(b):
        raise SaeError(f"decoders must be non-empty (K, C) matrices, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise SaeError(
            f"the SAEs have different widths C ({a.shape[1]} and {b.shape[1]}): "
            "only SAEs of the same layer can be matched"
        )


def _dense(a: torch.Tensor, b: torch.Tensor) -> Matching:
    cosines = (a @ b.T).numpy()
    rows, cols = linear_sum_assignment(cosines, maximize=True)
    best_partner = cosines.argmax(axis=1)
    best = cosines[np.arange(len(a)), best_partner]
    partner = np.full(len(a), -1, np.int64)
    partner[rows] = cols
    cosine = best.copy()
    cosine[rows] = cosines[rows, cols]
    return Matching(partner, cosine.astype(np.float32), best.astype(np.float32), best_partner, "dense")


def candidate_pairs(
    a: torch.Tensor, b: torch.Tensor, count: int, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, cosines) of each row of `a`'s `count` best columns of `b` and each column's
    `count` best rows, from one pass over blocks of `block` rows (memory `block` x K2)."""
    k_rows, k_cols = min(count, len(b)), min(count, len(a))
    rows, cols, values = [], [], []
    column_best = torch.full((0, len(b)), -torch.inf)
    column_rows = torch.zeros((0, len(b)), dtype=torch.int64)
    for start in range(0, len(a), block):
        similar = a[start : start + block] @ b.T  # (n, K2)
        top = similar.topk(k_rows, dim=1)
        rows.append(torch.arange(start, start + len(similar)).repeat_interleave(k_rows))
        cols.append(top.indices.reshape(-1))
        values.append(top.values.reshape(-1))
        here = similar.topk(min(k_cols, len(similar)), dim=0)
        merged = torch.cat([column_best, here.values])
        merged_rows = torch.cat([column_rows, here.indices + start])
        keep = merged.topk(min(k_cols, len(merged)), dim=0)
        column_best, column_rows = keep.values, merged_rows.gather(0, keep.indices)
    rows.append(column_rows.reshape(-1))
    cols.append(torch.arange(len(b)).repeat(len(column_rows)))
    values.append(column_best.reshape(-1))
    return torch.cat(rows).numpy(), torch.cat(cols).numpy(), torch.cat(values).numpy()


def _sparse(a: torch.Tensor, b: torch.Tensor, count: int, block: int) -> Matching:
    rows, cols, cosines = candidate_pairs(a, b, count, block)
    order = np.lexsort((-cosines, cols, rows))  # by row, then column; an edge found both ways once
    rows, cols, values = rows[order], cols[order], cosines[order].astype(np.float64)
    single = np.concatenate([[True], (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])])
    rows, cols, values = rows[single], cols[single], values[single]
    first = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))  # every row has edges
    best = np.maximum.reduceat(values, first)
    best_partner = cols[np.lexsort((-values, rows))][first]
    # Costs 2 - cosine lie in [1, 3] (never 0: a sparse graph has no zero-weight edges). Leaving a
    # feature unmatched costs more than any augmenting path of real pairs can gain.
    unmatched_cost = 3.0 * (min(len(a), len(b)) + 2)
    everyone = np.arange(len(a))
    graph = coo_array(
        (
            np.concatenate([2.0 - values, np.full(len(a), unmatched_cost)]),
            (np.concatenate([rows, everyone]), np.concatenate([cols, len(b) + everyone])),
        ),
        shape=(len(a), len(b) + len(a)),
    ).tocsr()
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
    real = matched_cols < len(b)
    matched_rows, matched_cols = matched_rows[real], matched_cols[real]
    partner = np.full(len(a), -1, np.int64)
    partner[matched_rows] = matched_cols
    cosine = best.copy()
    cosine[matched_rows] = 2.0 - np.asarray(graph[matched_rows, matched_cols]).reshape(-1)
    return Matching(partner, cosine.astype(np.float32), best.astype(np.float32), best_partner, "sparse")


def match_features(
    a: np.ndarray,
    b: np.ndarray,
    candidates: int = CANDIDATES,
    dense_max: int = DENSE_MAX,
    block: int = BLOCK,
) -> Matching:
    """Match the rows of decoder `a` (K1, C) to those of `b` (K2, C) one to one by cosine: the
    Hungarian method when K1 x K2 <= `dense_max`, else the sparse graph of `candidates` partners
    per feature each way."""
    a, b = np.asarray(a), np.asarray(b)
    _check(a, b)
    unit_a, unit_b = _unit(a), _unit(b)
    if len(a) * len(b) <= dense_max:
        return _dense(unit_a, unit_b)
    return _sparse(unit_a, unit_b, candidates, block)


@dataclass(frozen=True)
class StabilityWork(Work):
    """Decoder matching of an SAE layer's features to those of another SAE of the same layer."""

    kind: ClassVar[str] = "stability"
    version: ClassVar[str] = "1"  # bump when its result changes for the same inputs
    compare: str  # the other SAE's content digest (atlas.plan.sae.sae_digest)
    candidates: int


def _stability(ctx: WorkerContext, unit: Unit, work: StabilityWork) -> dict[str, pa.Table]:
    decoder = getattr(ctx.model.derived(unit.layer), "w_dec", None)
    if decoder is None:
        raise UnitFailed(f"layer {unit.layer!r} is not an SAE layer of this model; stability needs an SAE")
    base = base_layer(unit.layer)
    other = load_sae(Path(unit.inputs), base, ctx.model.channels(base))
    found = match_features(decoder.cpu().numpy(), other.w_dec, work.candidates)
    features = list(unit.channels)
    columns = {
        "layer": [unit.layer] * len(features),
        "channel": features,
        "partner": found.partner[features].tolist(),
        "cosine": found.cosine[features].tolist(),
        "best": found.best[features].tolist(),
        "best_partner": found.best_partner[features].tolist(),
    }
    return {"stability": keyed_table(columns, STABILITY_SCHEMA, unit.key)}


def stability_units(spec: JobSpec, facts: ModelFacts, inputs: PlanInputs) -> list[Unit]:
    """One unit per SAE layer with `sae_compare`, over every feature of the layer's SAE."""
    return [
        make_unit(
            facts.digest,
            layer.name,
            range(facts.channels[layer.name]),
            StabilityWork(sae_digest(layer.sae_compare), CANDIDATES),
            inputs=str(layer.sae_compare),
        )
        for layer in spec.layers
        if layer.sae is not None and layer.sae_compare is not None
    ]


def _cost(unit: Unit, spec: JobSpec, speed: Speed) -> float:
    """A small share of a scan: the cosines are one matrix product, the matching sparse."""
    return len(unit.channels) / (100 * speed.scan_images_per_s)


register_kind(
    StabilityWork,
    phase="first",
    planner=stability_units,
    handler=_stability,
    cost=_cost,
    tables=("stability",),
)
