"""The render step's cost does not grow with the number of parts packed into one batch.

Counted in operator calls (each one CUDA launch or more on a GPU), with scripts/bench_step.py's
counter: the step loop's calls stay flat from 1 to 12 parts, and the only per-part work is each
part's own random transform draws, made before the loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from bench_step import ops_per_step  # noqa: E402

from atlas.models import load_model  # noqa: E402
from atlas.optvis.param import PARAMS  # noqa: E402

# Calls a step may add for more parts: none are expected; a few allow for a group of a different
# size (the diversity term's index shapes) without letting one call per part through.
SLACK = 8


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-cnn")


@pytest.mark.parametrize("param", PARAMS.names())
def test_step_calls_do_not_grow_with_the_number_of_parts(tiny, param: str) -> None:
    counted = {
        parts: ops_per_step(tiny, "conv2", parts, size=32, steps=2, param=param) for parts in (1, 4, 12)
    }
    loop = [ops for ops, _ in counted.values()]
    assert max(loop) - min(loop) <= SLACK, counted
    # Before the loop: one set of draws per part and step from that part's generator, nothing more.
    draws = {parts: drawn for parts, (_, drawn) in counted.items()}
    assert draws[12] == 12 * draws[1] and draws[4] == 4 * draws[1], draws
