"""The one LSB selection path (issue 15 item 3): rank policies, fill mode, the strategy's report, and
``broaden simulate`` selecting through ``select()`` exactly as a user's call does."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from broaden.lsb import LSBResult, lsb
from broaden.lsb.lookalike import LookalikeError
from broaden.lsb.strategy import rank_candidates
from broaden.select import select
from tests.test_lsb import world


def _candidates(ids, sim, rank, lt):
    return pa.table({"id": pa.array(ids, pa.int64()), "similarity": pa.array(sim, pa.float32()),
                     "neighbor_rank": pa.array(rank, pa.int32()), "lookalike_score": pa.array(lt, pa.float64())})


def test_rank_policies_match_hand_orders():
    cand = _candidates([5, 3, 9, 1, 7], [0.9, 0.8, 0.8, 0.95, 0.7], [2, 1, 1, 1, 3], [0.6, 0.9, 0.9, 0.2, None])
    order, score = rank_candidates(cand, "similarity")
    assert cand.column("id").to_numpy()[order].tolist() == [1, 5, 3, 9, 7]  # 0.8 tie: id 3 before 9
    order, score = rank_candidates(cand, "nearest")
    assert cand.column("id").to_numpy()[order].tolist() == [1, 3, 9, 5, 7]  # rank 1s by similarity, then 2, 3
    assert score[order].tolist() == pytest.approx([0.95, 0.8, 0.8, 0.9, 0.7])
    order, score = rank_candidates(cand, "lookalike")
    # 0.9 tie (ids 3, 9) → same similarity → id; a missing LT score ranks last.
    assert cand.column("id").to_numpy()[order].tolist() == [3, 9, 5, 1, 7]
    with pytest.raises(ValueError, match="rank_by"):
        rank_candidates(cand, "lt")


def test_select_ranks_lsb_by_the_requested_policy(rng):
    labeled, pool = world(rng)
    ref = lsb(labeled, pool, max_seeds=30, seed_threshold=0.4, k=10, index="flat").candidates
    ids, sim = ref.column("id").to_numpy(), ref.column("similarity").to_numpy().astype(np.float64)
    rank = ref.column("neighbor_rank").to_numpy()
    out = select(pool, "lsb", 25, labeled=labeled, max_seeds=30, seed_threshold=0.4, k=10, index="flat",
                 rank_by="nearest")
    assert out.column("id").to_pylist() == ids[np.lexsort((ids, -sim, rank))][:25].tolist()


def test_fill_widens_k_until_the_share_is_filled(rng):
    labeled, pool = world(rng)
    opts = dict(max_seeds=5, seed_threshold=0.4, k=2, index="flat", lookalike_threshold=0.5)
    plain = select(pool, "lsb-lt:0.5,entropy:0.5", 60, labeled=labeled, **opts)
    n_plain = plain.column("strategy").to_pylist().count("lsb-lt")
    assert n_plain < 30  # 5 seeds × k=2 cannot fill 30 slots: the shortfall went to entropy
    filled, reports = select(pool, "lsb-lt:0.5,entropy:0.5", 60, labeled=labeled, fill=True, return_details=True,
                             **opts)
    assert filled.column("strategy").to_pylist().count("lsb-lt") == 30
    report = reports["lsb-lt"]
    assert isinstance(report, LSBResult) and report.stats["k_filled"] > 2
    # Every filled item passes τ2 and is a neighbour within the widened k of a seed.
    rows = [r for r in filled.to_pylist() if r["strategy"] == "lsb-lt"]
    assert all(r["lookalike_score"] > 0.5 and r["neighbor_rank"] <= report.stats["k_filled"] for r in rows)


def test_report_carries_the_lookalike_holdout(rng):
    labeled, pool = world(rng)
    _, reports = select(pool, "lsb-lt", 20, labeled=labeled, max_seeds=30, seed_threshold=0.4, index="flat",
                        return_details=True)
    res = reports["lsb-lt"]
    held = res.heldout
    assert held is not None and held.num_rows == res.lookalike.n_holdout_
    lab = {r["id"]: r for r in labeled.to_pylist()}
    emb = np.stack([lab[i]["embedding"] for i in held.column("id").to_pylist()])
    assert held.column("lookalike_score").to_numpy() == pytest.approx(res.lookalike.score(emb))
    from sklearn.metrics import roc_auc_score

    assert res.stats["lookalike_auc"] == pytest.approx(
        roc_auc_score(held.column("z").to_numpy(), held.column("lookalike_score").to_numpy()), abs=1e-4)


def test_lookalike_that_cannot_fit_passes_the_share_on(rng):
    labeled, pool = world(rng)
    # A seed threshold no item reaches: no bad cases, so LT cannot be fitted.
    out, reports = select(pool, "lsb-lt:0.5,entropy:0.5", 20, labeled=labeled, seed_threshold=0.999,
                          index="flat", return_details=True)
    assert out.column("strategy").to_pylist() == ["entropy"] * 20
    assert isinstance(reports["lsb-lt"], LookalikeError)


def test_simulation_selects_through_select(tmp_path):
    """An LSB group's batch equals ``select()`` called on the same snapshot with the documented mix."""
    from broaden.simulate import SimData, build_groups
    from broaden.simulate.protocol import RepeatRun, SimConfig, Snapshot

    r = np.random.default_rng(3)
    n, d = 900, 8
    centers = r.normal(size=(6, d)) * 3
    c = r.integers(0, 6, n)
    x = centers[c] + r.normal(size=(n, d))
    y = (c % 3).astype(np.int64)
    y[c == 5] = (y[c == 5] + 1) % 3  # a cluster the boundary gets wrong
    data = SimData("toy", np.arange(n), y, x, r.random(n) < 0.2, 3, task="multiclass")
    cfg = SimConfig(budget=60, initial=200, lsb_share=0.5, repeats=1, k=5, lookalike_threshold=0.3,
                    classifier={"hidden": (16,), "max_epochs": 20})
    groups = build_groups(include=["Stat-AL+LSB-LT"], num_classes=3)
    run = RepeatRun(data, cfg, groups, 0, None)
    train = np.flatnonzero(~data.is_test)
    initial, pool = train[:200], train[200:]
    snap = Snapshot(run, run.fit(initial, run.model_seed(0)), initial, pool, 1)
    spec = groups[1]
    sel = run.select(spec, snap)
    mix, options = run._lsb_mix(spec)
    assert mix == {"lsb-lt": 0.5, "least_confident": pytest.approx(1 / 6), "margin": pytest.approx(1 / 6),
                   "entropy": pytest.approx(1 / 6)}
    direct = select(snap.pool_table(latent=spec.latent), mix, cfg.budget, seed=run.model_seed(1),
                    labeled=snap.labeled_table(spec.latent), **options)
    assert sel.rows.tolist() == direct.column("id").to_pylist()
    assert sel.strategy.tolist() == direct.column("strategy").to_pylist()
    assert sel.lsb is not None and sel.lsb.summary["index"] == "flat"  # was always None before
    assert sel.lsb.summary["n_lsb_selected"] == direct.column("strategy").to_pylist().count("lsb-lt")
