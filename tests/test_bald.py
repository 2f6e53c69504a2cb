"""BALD (issue 17 item 2): the score against a hand-computed example and scikit-activeml's BALD on the same
probabilities; the strategy's picks against a brute-force sort; committee columns found in a pool scored
with --mc-dropout (probs_m0 …) by bald and qbc alike; errors that name what is missing."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.io import Columns, make_scored_table, matrix_to_list_array, write_table
from broaden.select import SelectionError, bald, kl_to_consensus, select, vote_entropy


def h(*p):
    """Entropy in nats, written out by hand."""
    return -sum(x * math.log(x) for x in p if x > 0)


def brute_top(scores, ids, k):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]]


def committee_pool(rng, n=400, members=4, c=3, ids=None):
    passes = rng.dirichlet(np.ones(c) * 0.8, size=(members, n))
    ids = rng.permutation(n) * 3 + 1 if ids is None else ids
    extra = {f"probs_m{i}": matrix_to_list_array(p) for i, p in enumerate(passes)}
    return make_scored_table(ids, passes.mean(0), extra=extra), passes, ids


def test_bald_matches_a_hand_computed_two_member_example():
    a = np.array([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.0, 1.0], [0.5, 0.5], [0.5, 0.5], [0.2, 0.8]])
    expected = [
        h(0.5, 0.5) - (h(1, 0) + h(0, 1)) / 2,              # total disagreement: ln 2
        h(0.5, 0.5) - (h(0.5, 0.5) + h(0.5, 0.5)) / 2,      # both unsure the same way: no epistemic part
        h(0.7, 0.3) - (h(0.9, 0.1) + h(0.5, 0.5)) / 2,      # 0.1017…
        0.0,                                                # identical members
    ]
    assert expected[0] == pytest.approx(math.log(2))
    assert bald([a, b]) == pytest.approx(expected, abs=1e-12)
    assert bald([a, b])[2] == pytest.approx(0.101749, abs=1e-6)
    # the mutual information written as mean KL to the mean: the same number (Houlsby et al. 2011, Eq. 3)
    assert bald([a, b]) == pytest.approx(kl_to_consensus([a, b]), abs=1e-12)


def test_bald_equals_scikit_activeml_on_the_same_probabilities(rng):
    skactiveml = pytest.importorskip("skactiveml.pool")
    passes = rng.dirichlet(np.ones(5) * 0.6, size=(8, 300))
    passes = np.clip(passes, 1e-6, None)  # skactiveml clips at eps = 1e-7 before its logs; stay above it
    passes /= passes.sum(axis=2, keepdims=True)
    ref = skactiveml.batch_bald(passes.copy(), batch_size=1)[0]  # first row: plain BALD of every sample
    ours = bald(list(passes))
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    ids = list(range(300))
    assert brute_top(list(ours), ids, 30) == brute_top(list(ref), ids, 30)


def test_bald_strategy_picks_the_top_mutual_information_and_finds_mc_columns(rng):
    table, passes, ids = committee_pool(rng)
    expected = brute_top(bald(list(passes)).tolist(), ids.tolist(), 40)
    found = select(table, "bald", 40)  # probs_m0..probs_m3 found without committee_cols
    named = select(table, "bald", 40, committee_cols=[f"probs_m{i}" for i in range(4)])
    assert found.column("id").to_pylist() == expected == named.column("id").to_pylist()
    assert found.column("score").to_numpy() == pytest.approx(np.sort(bald(list(passes)))[::-1][:40])
    assert set(found.column("strategy").to_pylist()) == {"bald"}


def test_qbc_reads_the_mc_dropout_columns_unchanged(rng):
    table, passes, ids = committee_pool(rng, members=3)
    ve = vote_entropy(list(passes)).tolist()
    assert select(table, "qbc", 50).column("id").to_pylist() == brute_top(ve, ids.tolist(), 50)
    # member order is numeric (m2 before m10), and renamed probs columns rename the committee with them
    cols = Columns(probs="p")
    assert cols.committee(3) == ["p_m0", "p_m1", "p_m2"]
    assert cols.committee_in(["p_m10", "p", "p_m2", "p_m02", "probs_m1", "p_mx"]) == ["p_m2", "p_m10"]


def test_bald_in_a_mix_and_from_the_cli(rng, tmp_path):
    table, passes, ids = committee_pool(rng)
    write_table(table, tmp_path / "pool.parquet")
    assert main(["select", str(tmp_path / "pool.parquet"), "--strategy", "bald:0.5,entropy:0.5", "--budget", "20",
                 "--out", str(tmp_path / "out.parquet")]) == 0
    out = pq.read_table(tmp_path / "out.parquet")
    picked = [i for i, s in zip(out.column("id").to_pylist(), out.column("strategy").to_pylist()) if s == "bald"]
    assert picked == brute_top(bald(list(passes)).tolist(), ids.tolist(), 10)


def test_committee_errors_name_what_is_missing(rng):
    plain = make_scored_table(np.arange(10), rng.dirichlet(np.ones(3), size=10))
    with pytest.raises(SelectionError, match=r"strategy 'bald' needs 2 or more committee.*--mc-dropout"):
        select(plain, "bald", 3)
    one = plain.append_column("probs_m0", plain.column("probs"))
    with pytest.raises(SelectionError, match="the pool has 1"):
        select(one, "qbc", 3)
    with pytest.raises(SelectionError, match="got 'probs_m0'"):
        select(one, "bald", 3, committee_cols="probs_m0")
    with pytest.raises(SelectionError, match="unknown strategy option.*qbc_measure"):
        select(one, "bald", 3, qbc_measures="kl")
