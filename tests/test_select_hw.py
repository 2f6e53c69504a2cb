"""HW-style batch mining: class quotas, easy share, ambiguous-top skip, weaker-model easy source,
relabelling dirty labels under a bound, determinism and layout independence."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.io import make_scored_table, matrix_to_list_array
from broaden.select import SelectionError, label_issue_mask, label_quality, random_keys, select
from broaden.select.hw import allocate, floored_shares

COUNTS = [7000, 2000, 900, 100]


def rows_predicting(rng, k, n, c=4):
    """``n`` probability rows whose argmax is class ``k``, with widely varying uncertainty."""
    p = -np.sort(-rng.dirichlet(np.full(c, 0.8), size=n), axis=1)
    out = np.empty_like(p)
    for i in range(n):
        order = np.concatenate([[k], rng.permutation([j for j in range(c) if j != k])])
        out[i, order] = p[i]
    return out


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(11)
    probs = np.concatenate([rows_predicting(rng, k, n) for k, n in enumerate(COUNTS)]).astype(np.float32)
    weak = rng.dirichlet(np.ones(4), size=len(probs)).astype(np.float32)
    perm = rng.permutation(len(probs))
    probs, weak = probs[perm], weak[perm]
    ids = rng.permutation(len(probs)) * 5 + 2
    table = make_scored_table(ids, probs, extra={"weak": matrix_to_list_array(weak)})
    return table, ids, probs.astype(np.float64), weak.astype(np.float64)


def ent(p):
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)


def ranked(ids, key):
    """ids sorted by key desc, id asc (brute-force reference)."""
    return [i for _, i in sorted(zip((-key).tolist(), ids.tolist()))]


def picked(out, ids, probs):
    pos = {v: i for i, v in enumerate(ids.tolist())}
    rows = np.array([pos[i] for i in out.column("id").to_pylist()])
    return rows, probs[rows].argmax(1)


def test_default_quotas_are_proportional_with_rare_class_floor(pool):
    table, ids, probs, _ = pool
    out = select(table, "hw", 1000, easy_share=0.0)
    rows, cls = picked(out, ids, probs)
    # shares: class 3 raised to the 5 % floor, the rest split .95 by 7000:2000:900 → 671.7, 191.9, 86.4, 50
    # → floors 671, 191, 86, 50 (998) + the two largest remainders (.92, .72) → 672, 192, 86, 50
    assert np.bincount(cls, minlength=4).tolist() == [672, 192, 86, 50]
    pred = probs.argmax(1)
    for k, q in enumerate([672, 192, 86, 50]):
        mine = set(out.column("id").to_numpy()[cls == k].tolist())
        assert mine == set(ranked(ids[pred == k], ent(probs[pred == k]))[:q])
    assert out.column("strategy").to_pylist() == ["hw"] * 1000
    assert (np.diff(out.column("score").to_numpy()) <= 1e-12).all()  # hard picks best-first


def test_explicit_proportions_and_overflow_from_a_small_class(pool):
    table, ids, probs, _ = pool
    out = select(table, "hw", 800, proportions="0.25,0.25,0.25,0.25", easy_share=0)
    _, cls = picked(out, ids, probs)
    # 200 each, but class 3 has only 100 → the 100 left split equally 34/33/33 (ties to the earlier class)
    assert np.bincount(cls, minlength=4).tolist() == [234, 233, 233, 100]
    out = select(table, "hw", 100, proportions="0:0.5,3:0.5", easy_share=0)
    assert np.bincount(picked(out, ids, probs)[1], minlength=4).tolist() == [50, 0, 0, 50]


def test_easy_share_from_band_is_seeded_and_never_overlaps_hard(pool):
    table, ids, probs, _ = pool
    out = select(table, "hw", 1000, easy_share=0.2, easy_band="0.2,0.6", seed=4)
    rows, cls = picked(out, ids, probs)
    assert np.bincount(cls, minlength=4).tolist() == [672, 192, 86, 50]
    easy_q = [135, 38, 17, 10]  # 200 × quota/1000 = 134.4, 38.4, 17.2, 10 → + 1 to the first .4 remainder
    hard_q = [672 - 135, 192 - 38, 86 - 17, 50 - 10]
    got = out.column("id").to_numpy()
    hard, easy = got[:800], got[800:]
    pred = probs.argmax(1)
    ne = ent(probs) / np.log(4)
    for k in range(4):
        in_k = pred == k
        ref_hard = ranked(ids[in_k], ent(probs[in_k]))[: hard_q[k]]
        assert set(hard[cls[:800] == k].tolist()) == set(ref_hard)
        band = in_k & (ne >= 0.2) & (ne <= 0.6) & ~np.isin(ids, ref_hard)
        ref_easy = ranked(ids[band], random_keys(ids[band], 4))[: easy_q[k]]
        assert set(easy[cls[800:] == k].tolist()) == set(ref_easy)
    assert select(table, "hw", 1000, easy_share=0.2, easy_band="0.2,0.6", seed=4).equals(out)
    other = select(table, "hw", 1000, easy_share=0.2, easy_band="0.2,0.6", seed=5).column("id").to_numpy()
    assert set(other[:800]) == set(hard) and set(other[800:]) != set(easy)


def test_skip_top_removes_the_most_ambiguous_of_each_class(pool):
    table, ids, probs, _ = pool
    out = select(table, "hw", 1000, easy_share=0, skip_top=0.1)
    _, cls = picked(out, ids, probs)
    got = out.column("id").to_numpy()
    pred = probs.argmax(1)
    for k, q in enumerate([672, 192, 86, 50]):
        order = ranked(ids[pred == k], ent(probs[pred == k]))
        skip = COUNTS[k] // 10
        assert set(got[cls == k].tolist()) == set(order[skip: skip + q])


def test_easy_items_from_a_weaker_model(pool):
    table, ids, probs, weak = pool
    out = select(table, "hw", 500, easy_share=0.4, easy_source="weak", uncertainty="margin")
    rows, cls = picked(out, ids, probs)
    got = out.column("id").to_numpy()
    n_easy = 200
    hard, easy = got[:-n_easy], got[-n_easy:]
    pred = probs.argmax(1)
    marg = lambda p: -np.diff(np.sort(p, axis=1)[:, -2:], axis=1).ravel()  # noqa: E731  (−margin: higher = pick)
    for k in range(4):
        in_k = pred == k
        mine_hard = hard[cls[:-n_easy] == k]
        assert set(mine_hard.tolist()) == set(ranked(ids[in_k], marg(probs[in_k]))[: len(mine_hard)])
        cand = in_k & ~np.isin(ids, mine_hard)
        mine_easy = easy[cls[-n_easy:] == k]
        assert set(mine_easy.tolist()) == set(ranked(ids[cand], marg(weak[cand]))[: len(mine_easy)])


def test_dirty_bound_relabels_worst_suspects_and_skips_other_labelled(pool):
    table, ids, probs, _ = pool
    rng = np.random.default_rng(3)
    lab_rows = rng.choice(len(ids), size=1500, replace=False)
    labels = probs[lab_rows].argmax(1)
    flip = rng.random(1500) < 0.08
    labels[flip] = (labels[flip] + 1) % 4
    labeled = make_scored_table(ids[lab_rows], probs[lab_rows], labels=labels)
    out = select(table, "hw", 300, labeled=labeled, dirty_bound=0.02, easy_share=0)
    mask = label_issue_mask(labels, probs[lab_rows], dirty_bound=0.02)
    q = label_quality(labels, probs[lab_rows])
    flagged = ids[lab_rows][mask]
    expected = flagged[np.argsort(q[mask], kind="stable")]
    got = out.column("id").to_numpy()
    assert 0 < len(expected) < 300
    assert got[: len(expected)].tolist() == expected.tolist()
    np.testing.assert_allclose(out.column("score").to_numpy()[: len(expected)], 1 - np.sort(q[mask]))
    others = np.setdiff1d(ids[lab_rows], flagged)
    assert not np.isin(got, others).any()
    plain = select(table, "hw", 300, labeled=labeled, easy_share=0).column("id").to_numpy()
    assert not np.isin(plain, ids[lab_rows]).any()
    with pytest.raises(SelectionError, match="dirty_bound needs the labelled set"):
        select(table, "hw", 10, dirty_bound=0.02)


def test_hw_in_a_mix_and_over_many_files(pool, tmp_path):
    table, ids, probs, _ = pool
    out = select(table, "hw:0.5,entropy:0.5", 400, easy_share=0.25)
    got = out.column("id").to_pylist()
    assert len(set(got)) == 400 and out.column("strategy").to_pylist().count("hw") == 200
    d = tmp_path / "parts"
    d.mkdir()
    for i, start in enumerate(range(0, table.num_rows, 1700)):
        pq.write_table(table.slice(start, 1700), d / f"p{i}.parquet")
    assert select(d, "hw", 700, easy_share=0.3, skip_top=0.05, batch_size=500).equals(
        select(table, "hw", 700, easy_share=0.3, skip_top=0.05))


def test_quota_helpers_and_option_errors(pool):
    t = floored_shares(np.array([7000, 2000, 900, 100, 0]), 0.05)
    assert t[3] == pytest.approx(0.05) and t[4] == 0 and t.sum() == pytest.approx(1)
    assert allocate(10, np.array([0.5, 0.5]), np.array([3, 100]), np.array([1.0, 1.0])).tolist() == [3, 7]
    assert allocate(10, np.array([1.0, 0.0]), np.array([3, 100]), np.array([1.0, 1.0])).tolist() == [3, 7]
    table = pool[0]
    for bad, msg in [({"easy_share": 1.5}, "easy_share"), ({"easy_band": "0.7,0.2"}, "easy_band"),
                     ({"uncertainty": "vibes"}, "uncertainty"), ({"proportions": "1,2"}, "4 classes"),
                     ({"floor": 0.3}, "exceeds"), ({"proportions": "a,b,c,d"}, "proportions: 'a' is not a number"),
                     ({"proportions": "0:1,x:2"}, "'x' is not an integer"), ({"proportions": "0:1:2"}, "must look like"),
                     ({"easy_band": "x,0.5"}, "easy_band: 'x' is not a number"), ({"floor": "lots"}, "floor: 'lots'")]:
        with pytest.raises(SelectionError, match=msg):
            select(table, "hw", 10, **bad)


def test_hw_uses_only_the_pool_it_is_given(pool):
    small = pool[0].slice(0, 40)
    assert select(small, "hw", 40).num_rows == 40
    with pytest.raises(SelectionError, match="larger than the eligible pool"):
        select(small, "hw", 41)
