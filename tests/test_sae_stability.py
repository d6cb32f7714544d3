"""Stability of SAE features across SAEs (atlas.kinds.stability): the one-to-one matcher finds
planted features in two SAEs trained with different seeds, recovers a permutation, handles
K1 != K2, and its sparse path for large K agrees with the dense Hungarian where both run; the
`sae_compare` key and `atlas sae-match` say what is wrong with bad input in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sae_training import planted_vectors, save_saelens, train_sae

from atlas.cli import main
from atlas.kinds.stability import Matching, candidate_pairs, match_features
from atlas.plan.sae import SaeError
from atlas.site.stability import STABLE, distribution


def _both_ways(a: np.ndarray, b: np.ndarray, candidates: int = 8) -> tuple[Matching, Matching]:
    """The dense answer and the sparse one (every size forced onto the sparse path, small blocks)."""
    return match_features(a, b), match_features(a, b, candidates, dense_max=0, block=7)


def test_two_seeds_find_the_planted_features_and_match_them_above_0_9() -> None:
    vectors, planted = planted_vectors(directions=16, width=32, count=2048, seed=0)
    first, second = (train_sae(vectors, 64, seed, steps=200, l1=0.3) for seed in (0, 1))
    for sae in (first, second):  # each SAE learned every planted direction
        assert (planted @ sae.w_dec.T).max(axis=1).min() >= STABLE
    found = match_features(first.w_dec, second.w_dec)
    assert found.method == "dense" and found.matched.all()
    pairs = np.flatnonzero(found.cosine >= STABLE)
    for direction in planted:  # some matched pair carries it, both sides and the pair above 0.9
        near_first = first.w_dec[pairs] @ direction >= STABLE
        near_second = second.w_dec[found.partner[pairs]] @ direction >= STABLE
        assert (near_first & near_second).any()
    summary = distribution(found.partner, found.cosine)
    assert summary.stable >= 16 / 64 and summary.related >= summary.stable
    assert summary.matched == 64 and list(summary.quantiles) == [0.1, 0.25, 0.5, 0.75, 0.9]


def _decoder(rows: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 60), width=st.integers(4, 24), seed=st.integers(0, 10**6))
def test_a_permuted_noisy_copy_is_recovered_exactly(rows: int, width: int, seed: int) -> None:
    a = _decoder(rows, width, seed)
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(rows)
    b = a[order] + 1e-3 * rng.normal(size=a.shape).astype(np.float32)
    for found in _both_ways(a, b):
        np.testing.assert_array_equal(order[found.partner], np.arange(rows))  # b[partner[i]] is a[i]
        assert found.matched.all() and found.cosine.min() > 0.99
        np.testing.assert_array_equal(found.partner, found.best_partner)


@settings(max_examples=30, deadline=None)
@given(
    small=st.integers(1, 30),
    extra=st.integers(1, 30),
    width=st.integers(6, 24),
    seed=st.integers(0, 10**6),
)
def test_k1_smaller_and_larger_than_k2(small: int, extra: int, width: int, seed: int) -> None:
    large = _decoder(small + extra, width, seed)
    picked = np.random.default_rng(seed).permutation(small + extra)[:small]
    subset = large[picked] * 2.0  # lengths do not matter, only directions
    for found in _both_ways(subset, large):  # K1 < K2: every feature finds its source
        np.testing.assert_array_equal(found.partner, picked)
    for found in _both_ways(large, subset):  # K1 > K2: the sources matched, the others not
        assert found.matched.sum() == small
        np.testing.assert_array_equal(found.partner[picked], np.arange(small))
        left = ~found.matched
        np.testing.assert_array_equal(found.cosine[left], found.best[left])  # unmatched: best cosine
        np.testing.assert_allclose(found.best, (_unit(large) @ _unit(subset).T).max(axis=1), atol=1e-5)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(
    k1=st.integers(1, 40),
    k2=st.integers(1, 40),
    width=st.integers(2, 16),
    candidates=st.integers(1, 6),
    seed=st.integers(0, 10**6),
)
def test_the_sparse_path_agrees_with_the_dense_hungarian(
    k1: int, k2: int, width: int, candidates: int, seed: int
) -> None:
    a, b = _decoder(k1, width, seed), _decoder(k2, width, seed + 1)
    dense = match_features(a, b)
    complete = match_features(a, b, candidates=max(k1, k2), dense_max=0, block=5)
    assert (dense.method, complete.method) == ("dense", "sparse")
    total = dense.cosine[dense.matched].sum()
    assert complete.matched.sum() == dense.matched.sum() == min(k1, k2)
    assert complete.cosine[complete.matched].sum() == pytest.approx(total, abs=1e-4)
    np.testing.assert_allclose(complete.best, dense.best, atol=1e-6)
    few = match_features(a, b, candidates=candidates, dense_max=0, block=5)  # a sparse graph
    assert few.matched.sum() <= min(k1, k2)
    cosines = _unit(a) @ _unit(b).T
    pairs = few.partner[few.matched]
    assert len(set(pairs.tolist())) == len(pairs)  # one to one
    np.testing.assert_allclose(few.cosine[few.matched], cosines[few.matched, pairs], atol=1e-5)
    np.testing.assert_allclose(few.best, dense.best, atol=1e-6)  # each row's best is a candidate
    if few.matched.sum() == dense.matched.sum():
        assert few.cosine[few.matched].sum() <= total + 1e-4


def test_candidates_are_each_rows_and_each_columns_best() -> None:
    a, b = _unit(_decoder(23, 5, 1)), _unit(_decoder(17, 5, 2))
    import torch

    rows, cols, values = candidate_pairs(torch.from_numpy(a), torch.from_numpy(b), 3, block=4)
    cosines = a @ b.T
    found = set(zip(rows.tolist(), cols.tolist(), strict=True))
    for i in range(23):
        assert {(i, int(j)) for j in np.argsort(-cosines[i])[:3]} <= found
    for j in range(17):
        assert {(int(i), j) for i in np.argsort(-cosines[:, j])[:3]} <= found
    np.testing.assert_allclose(values, cosines[rows, cols], atol=1e-6)


def test_decoders_of_different_widths_are_refused() -> None:
    with pytest.raises(SaeError, match="different widths C"):
        match_features(_decoder(4, 8, 0), _decoder(4, 9, 0))


def _saved(folder: Path, width: int, features: int, seed: int) -> Path:
    vectors, _ = planted_vectors(directions=8, width=width, count=256, seed=seed)
    return save_saelens(train_sae(vectors, features, seed, steps=20), folder)


def test_sae_match_prints_the_distribution_and_bad_input_is_one_line(tmp_path: Path) -> None:
    first, second = _saved(tmp_path / "a", 16, 32, 0), _saved(tmp_path / "b", 16, 48, 1)
    table = tmp_path / "match.csv"
    result = CliRunner().invoke(
        main, ["sae-match", str(first), str(second), "--layer", "6", "--csv", str(table)]
    )
    assert result.exit_code == 0, result.output
    assert "(32 features) against" in result.output and "32 of 32 features matched" in result.output
    rows = table.read_text().splitlines()
    assert rows[0] == "feature,partner,cosine,best,best_partner" and len(rows) == 33
    other = _saved(tmp_path / "c", 12, 32, 2)
    for args, message in (
        ([str(first), str(tmp_path / "nowhere")], "does not exist"),
        ([str(first), str(other)], "different widths C (16 and 12)"),
    ):
        result = CliRunner().invoke(main, ["sae-match", *args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert message in lines[0] and "Traceback" not in result.output


def _spec(folder: Path, layer: str) -> Path:
    spec = folder / "job.toml"
    spec.write_text(
        textwrap.dedent(
            f"""
            [job]
            out = "{folder / "out"}"
            [model]
            name = "tiny-cnn"
            {layer}
            [render]
            enabled = false
            [examples]
            source = "demo"
            [interactions]
            random_directions = 0
            """
        )
    )
    return spec


@pytest.mark.parametrize(
    "table, message",
    [
        ('name = "conv2"\nsae_compare = "a"', "needs sae = "),
        ('name = "conv2"\nsae = "a"\nsae_compare = "nowhere"', "nowhere does not exist"),
        ('name = "conv2"\nsae = "a"\nsae_compare = 3', "expected a path string"),
        ('name = "conv2"\nsae = "a"\nsae_compare = "narrow"', "narrow: its config says d_in = 16"),
    ],
)
def test_a_bad_sae_compare_is_one_error_line_before_any_work(
    tmp_path: Path, table: str, message: str
) -> None:
    _saved(tmp_path / "a", 32, 32, 0)  # tiny-cnn's conv2 has 32 channels
    _saved(tmp_path / "narrow", 16, 32, 0)
    result = CliRunner().invoke(main, ["plan", str(_spec(tmp_path, "[[layers]]\n" + table))])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_stability_unit_is_keyed_by_the_compared_sae_and_leaves_other_keys_alone(tmp_path: Path) -> None:
    from atlas.plan.spec import load_spec
    from atlas.run.job import prepare

    _saved(tmp_path / "a", 32, 32, 0)
    for name, seed in (("b", 1), ("c", 2)):
        _saved(tmp_path / name, 32, 32, seed)

    def units(compare: str) -> dict[str, set[str]]:
        table = 'name = "conv2"\nsae = "a"\nchannels = "0:4"\n' + compare
        plan = prepare(load_spec(_spec(tmp_path, "[[layers]]\n" + table))).plan
        found: dict[str, set[str]] = {}
        for unit in plan.units:
            found.setdefault(unit.kind, set()).add(unit.key)
        return found

    alone, with_b, with_c = units(""), units('sae_compare = "b"'), units('sae_compare = "c"')
    assert "stability" not in alone and len(with_b["stability"]) == len(with_c["stability"]) == 1
    assert with_b["stability"] != with_c["stability"]  # another compared SAE: recomputed
    for found in (with_b, with_c):  # every other unit keeps its key
        assert {kind: keys for kind, keys in found.items() if kind != "stability"} == alone
