"""Latent Space Broadening end to end (issue 4): seeds, broadening, dedup, Lookalike Threshold, CLI, select."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from broaden.cli import main
from broaden.errors import ScoredTableError
from broaden import io
from broaden.io import make_scored_table, write_table
from broaden.lsb import LookalikeModel, lsb, seed_bad_cases
from broaden.lsb.lookalike import LookalikeError

C = 4


def world(rng, n_lab=600, n_pool=3000, d=16, clusters=12):
    """Clustered embeddings; some clusters are 'hard' (the simulated model errs there)."""
    centers = rng.normal(size=(clusters, d)) * 2
    hard = rng.random(clusters) < 0.4

    def draw(n):
        c = rng.integers(0, clusters, n)
        x = (centers[c] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
        y = c % C
        wrong = rng.random(n) < np.where(hard[c], 0.7, 0.05)
        pred = np.where(wrong, (y + rng.integers(1, C, n)) % C, y)
        alpha = np.full((n, C), 0.6)
        alpha[np.arange(n), pred] = 5.0
        p = rng.gamma(alpha)
        return x, y, (p / p.sum(1, keepdims=True)).astype(np.float32)

    xl, yl, pl = draw(n_lab)
    xp, _, pp = draw(n_pool)
    labeled = make_scored_table(np.arange(n_lab), pl, xl, yl)
    pool = make_scored_table(np.arange(10_000, 10_000 + n_pool), pp, xp,
                             extra={"text": [f"pool item {i}" for i in range(n_pool)]})
    return labeled, pool


def ref_discrepancy(y, p, kind):
    p = p.astype(np.float64)
    if kind == "ordinal":
        return np.abs(y - p @ np.arange(p.shape[1])) / (p.shape[1] - 1)
    return 1 - p[np.arange(len(y)), y]


def arrays(table):
    y = table.column("label").to_numpy(zero_copy_only=False)
    p = np.stack(table.column("probs").to_pylist())
    x = np.stack(table.column("embedding").to_pylist())
    return table.column("id").to_numpy(), y, p, x


# ------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("kind", ["ordinal", "nominal"])
def test_seeds_equal_independent_computation(rng, kind):
    labeled, _ = world(rng)
    ids, y, p, _ = arrays(labeled)
    d = ref_discrepancy(y, p, kind)
    got = seed_bad_cases(labeled, seed_threshold=0.4, max_seeds=50, discrepancy=kind)
    want = sorted((i for i in range(len(y)) if d[i] > 0.4), key=lambda i: (-d[i], ids[i]))[:50]
    assert got.column("id").to_pylist() == ids[want].tolist()
    np.testing.assert_allclose(got.column("discrepancy").to_numpy(), d[want], rtol=1e-6)
    assert got.column("pred").to_pylist() == p[want].argmax(1).tolist()
    assert got.column("label").to_pylist() == y[want].tolist()
    assert {"probs", "embedding"} <= set(got.schema.names)


def test_seed_ties_break_by_id_and_per_class_cap(rng):
    probs = np.array([[0.1, 0.9]] * 6 + [[0.5, 0.5]])
    labels = np.array([0, 0, 0, 1, 0, 0, 0])
    table = make_scored_table([9, 3, 7, 1, 5, 2, 8], probs, None, labels)
    got = seed_bad_cases(table, seed_threshold=0.5, max_seeds=None)
    assert got.column("id").to_pylist() == [2, 3, 5, 7, 9]  # equal d: ids ascending; d = 0.5 is not > τ1
    capped = seed_bad_cases(table, seed_threshold=0.0, max_seeds=None, per_class_cap=2)
    assert capped.column("id").to_pylist() == [2, 3, 1]  # two of label 0 (d 0.9), then label 1 (d 0.1)
    assert seed_bad_cases(table, seed_threshold=0.5, max_seeds=2).num_rows == 2


def test_denoised_seeds_drop_what_cleanlab_flags(rng):
    from cleanlab.filter import find_label_issues

    labeled, _ = world(rng, n_lab=800)
    ids, y, p, _ = arrays(labeled)
    flagged = find_label_issues(y, p, filter_by="prune_by_noise_rate")
    assert flagged.any()
    plain = set(seed_bad_cases(labeled, seed_threshold=0.3, max_seeds=None).column("id").to_pylist())
    clean = set(seed_bad_cases(labeled, seed_threshold=0.3, max_seeds=None, denoise=True).column("id").to_pylist())
    assert clean == plain - set(ids[flagged].tolist())


# --------------------------------------------------------------------------------------- lookalike
def test_lookalike_matches_sklearn_and_round_trips(rng, tmp_path):
    x = rng.normal(size=(400, 8))
    z = (x[:, 0] + 0.8 * rng.normal(size=400) > 1.0).astype(int)
    full = LookalikeModel(holdout=0).fit(x, z)
    ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x, z)
    np.testing.assert_allclose(full.predict_proba(x), ref.predict_proba(x), atol=1e-6)

    held = LookalikeModel(holdout=0.25, seed=3).fit(x, z)
    test = held.holdout_index_
    train = np.setdiff1d(np.arange(400), test)
    ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x[train], z[train])
    np.testing.assert_allclose(held.score(x), ref.predict_proba(x)[:, 1], atol=1e-6)
    assert held.auc_ == pytest.approx(roc_auc_score(z[test], ref.predict_proba(x[test])[:, 1]))
    assert len(test) == 100 and z[test].mean() == pytest.approx(z.mean(), abs=0.02)  # stratified

    held.save(tmp_path / "lt.json")
    back = LookalikeModel.load(tmp_path / "lt.json")
    np.testing.assert_allclose(back.score(x), held.score(x))
    assert back.auc_ == pytest.approx(held.auc_)
    (tmp_path / "bad.json").write_text('{"format": "broaden.lookalike/1", "coef": "x"}')
    with pytest.raises(LookalikeError, match="bad.json"):
        LookalikeModel.load(tmp_path / "bad.json")
    with pytest.raises(LookalikeError, match="at least 2 bad cases"):
        LookalikeModel().fit(x, np.zeros(400, int))


# ------------------------------------------------------------------------------------------ broaden
def brute_neighbours(q, x, k, allowed):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = qn @ xn.T
    sim[:, ~allowed] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


def test_lsb_union_dedup_exclusion_against_brute_force(rng):
    labeled, pool = world(rng)
    # Two labelled items also sit in the pool: already labelled, so never candidates.
    pool = pa.concat_tables([pool, labeled.slice(0, 2).select(["id", "probs", "embedding"]).append_column(
        "text", pa.array(["dup", "dup"]))], promote_options="default")
    pid, _, _, px = arrays(pool.append_column("label", pa.nulls(pool.num_rows, pa.int64())))
    excluded = pid[5:40:3].tolist()
    k = 6
    res = lsb(labeled, pool, max_seeds=40, seed_threshold=0.4, k=k, index="flat", exclude=excluded)
    seeds = res.seeds
    sid = seeds.column("id").to_numpy()
    q = np.stack(seeds.column("embedding").to_pylist())
    allowed = ~np.isin(pid, excluded + labeled.column("id").to_pylist())
    order, sims = brute_neighbours(q, px, k, allowed)

    best: dict = {}
    for s in range(len(sid)):
        for r in range(k):
            item, sim = pid[order[s, r]], sims[s, r]
            entry = best.setdefault(item, [])
            entry.append((sim, r + 1, s))
    cand = res.candidates
    got_ids = cand.column("id").to_pylist()
    assert sorted(got_ids) == sorted(best) and len(set(got_ids)) == len(got_ids)
    assert not set(got_ids) & (set(excluded) | set(labeled.column("id").to_pylist()))
    for row in cand.select(["id", "seed_id", "neighbor_rank", "similarity", "seed_ids"]).to_pylist():
        reached = sorted(best[row["id"]], key=lambda t: (-t[0], t[1], t[2]))
        assert row["similarity"] == pytest.approx(reached[0][0], abs=1e-5)
        assert row["seed_id"] == sid[reached[0][2]] and row["neighbor_rank"] == reached[0][1]
        assert sorted(row["seed_ids"]) == sorted(sid[[t[2] for t in reached]].tolist())
    sims_out = cand.column("similarity").to_numpy()
    assert (np.diff(sims_out) <= 1e-7).all()  # best similarity first
    assert cand.column("lookalike_score").null_count == cand.num_rows  # no LT requested
    assert {"probs", "embedding", "text"} <= set(cand.schema.names)
    assert res.stats["seeds"] == 40 and res.index_info["index"] == "flat"


def test_lookalike_threshold_filters_like_sklearn(rng):
    labeled, pool = world(rng, n_lab=900)
    ids, y, p, x = arrays(labeled)
    plain = lsb(labeled, pool, max_seeds=30, seed_threshold=0.4, k=8, index="flat")
    res = lsb(labeled, pool, max_seeds=30, seed_threshold=0.4, k=8, index="flat", lookalike_threshold=0.5,
              lookalike_holdout=0)
    d = ref_discrepancy(y, p, "ordinal")
    rows = (d > 0.4) | (p.argmax(1) == y)
    ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x[rows], (d > 0.4)[rows].astype(int))
    cand_x = np.stack(plain.candidates.column("embedding").to_pylist())
    ref_score = ref.predict_proba(cand_x)[:, 1]
    keep = set(np.asarray(plain.candidates.column("id").to_pylist())[ref_score > 0.5].tolist())
    assert set(res.candidates.column("id").to_pylist()) == keep and 0 < len(keep) < plain.candidates.num_rows
    got = dict(zip(res.candidates.column("id").to_pylist(), res.candidates.column("lookalike_score").to_pylist()))
    want = dict(zip(plain.candidates.column("id").to_pylist(), ref_score))
    assert all(got[i] == pytest.approx(want[i], abs=1e-6) for i in got)
    # bad cases concentrate in hard clusters, so the held-out AUC of the default model is well above chance
    assert lsb(labeled, pool, max_seeds=30, seed_threshold=0.4, k=8, index="flat",
               lookalike_threshold=0.5).stats["lookalike_auc"] > 0.7


def test_case_study_lists_seed_and_its_neighbours(rng):
    labeled, pool = world(rng)
    res = lsb(labeled, pool, max_seeds=10, seed_threshold=0.4, k=3, index="flat", lookalike_threshold=0.5,
              case_study=2)
    assert len(res.case_study) == 2
    first = res.case_study[0]
    assert first["seed"]["id"] == res.seeds.column("id")[0].as_py() and len(first["seed"]["probs"]) == C
    assert "embedding" not in first["seed"]
    assert [n["neighbor_rank"] for n in first["neighbors"]] == [1, 2, 3]
    kept = set(res.candidates.column("id").to_pylist())
    for n in first["neighbors"]:
        assert len(n["probs"]) == C and n["text"].startswith("pool item")
        assert n["kept"] == (n["id"] in kept) and n["kept"] == (n["lookalike_score"] > 0.5)


def test_embedding_dimension_mismatch_is_a_clear_error(rng):
    labeled, pool = world(rng)
    short = make_scored_table(pool.column("id").to_numpy(), embedding=np.zeros((pool.num_rows, 5), np.float32))
    with pytest.raises(ScoredTableError, match="dimension mismatch in column 'embedding'.*16.*5"):
        lsb(labeled, short, max_seeds=5, seed_threshold=0.4)


def test_embedding_col_selects_the_latent(rng):
    labeled, pool = world(rng)
    lab = labeled.append_column("hidden", labeled.column("embedding"))
    res = lsb(lab, pool.rename_columns(["id", "probs", "hidden", "text"]), max_seeds=5, seed_threshold=0.4, k=2,
              embedding_col="hidden", index="flat")
    assert res.candidates.num_rows > 0 and "hidden" in res.candidates.schema.names


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_writes_candidates_case_study_and_model(rng, tmp_path, capsys):
    labeled, pool = world(rng)
    write_table(labeled, tmp_path / "lab.parquet")
    write_table(pool, tmp_path / "pool.parquet")
    (tmp_path / "skip.txt").write_text("10001\n10002\n")
    out = tmp_path / "cand.parquet"
    code = main(["lsb", "--labeled", str(tmp_path / "lab.parquet"), "--pool", str(tmp_path / "pool.parquet"),
                 "--out", str(out), "--seeds", "20", "--seed-threshold", "0.4", "--k", "4", "--index", "ivf",
                 "--lookalike-threshold", "0.3", "--case-study", "3", "--exclude", str(tmp_path / "skip.txt"),
                 "--lookalike-out", str(tmp_path / "lt.json"), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    table = pq.read_table(out)
    assert table.schema.names[:6] == ["id", "seed_id", "neighbor_rank", "similarity", "lookalike_score", "seed_ids"]
    assert summary["candidates"] == table.num_rows and not {10001, 10002} & set(table.column("id").to_pylist())
    assert summary["index"]["calibration"]["recall"] >= 0.95
    lines = (tmp_path / "cand.case_study.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "neighbors" in json.loads(lines[0])
    assert LookalikeModel.load(tmp_path / "lt.json").coef_.size == 16


def test_cli_dimension_mismatch_is_one_line(rng, tmp_path, capsys):
    labeled, pool = world(rng)
    write_table(labeled, tmp_path / "lab.parquet")
    write_table(make_scored_table([1, 2], embedding=np.zeros((2, 3), np.float32)), tmp_path / "pool.parquet")
    code = main(["lsb", "--labeled", str(tmp_path / "lab.parquet"), "--pool", str(tmp_path / "pool.parquet"),
                 "--out", str(tmp_path / "o.parquet"), "--seed-threshold", "0.4"])
    assert code == 2 and "dimension mismatch" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_bad_k_and_metric_are_one_line_errors(rng, tmp_path, capsys):
    labeled, pool = world(rng, n_lab=100, n_pool=200)
    write_table(labeled, tmp_path / "lab.parquet")
    write_table(pool, tmp_path / "pool.parquet")
    args = ["--labeled", str(tmp_path / "lab.parquet"), "--out", str(tmp_path / "o.parquet"), "--seed-threshold", "0.4"]
    assert main(["lsb", "--pool", str(tmp_path / "pool.parquet"), *args, "--k", "0"]) == 2
    assert "error: k (neighbours per seed) must be >= 1, got 0" in capsys.readouterr().err
    assert main(["select", str(tmp_path / "pool.parquet"), "--strategy", "lsb", "--budget", "5", *args,
                 "--metric", "dot"]) == 2
    assert "error: unknown metric 'dot'" in capsys.readouterr().err
    assert main(["lsb", "--pool", str(tmp_path / "pool.parquet"), *args, "--lookalike-out", str(tmp_path / "lt.json")]) == 2
    assert "none is fitted without --lookalike-threshold" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "lt.json").exists()


# ------------------------------------------------------------------------------------------- select
def test_select_mixes_statistical_al_and_lsb(rng):
    from broaden.select import select

    labeled, pool = world(rng)
    out = select(pool, "entropy:0.5,lsb:0.25,lsb-lt:0.25", 40, labeled=labeled, seed_threshold=0.4, max_seeds=30,
                 index="flat")
    strategies = out.column("strategy").to_pylist()
    assert out.num_rows == 40 and len(set(out.column("id").to_pylist())) == 40
    assert strategies.count("lsb") == 10 and strategies.count("lsb-lt") == 10
    broadened = lsb(labeled, pool, max_seeds=30, seed_threshold=0.4, k=10, index="flat", lookalike_threshold=0.5)
    cand = dict(zip(broadened.candidates.column("id").to_pylist(),
                    broadened.candidates.column("lookalike_score").to_pylist()))
    lt_rows = [r for r in out.to_pylist() if r["strategy"] == "lsb-lt"]
    assert all(r["score"] > 0.5 for r in lt_rows)
    assert [r["score"] for r in lt_rows] == sorted((r["score"] for r in lt_rows), reverse=True)
    assert all(r["id"] in cand for r in lt_rows)
    # select keeps LSB provenance: the lookalike score is the score it ranked by, the similarity is the
    # cosine to the named seed; statistical picks carry none.
    lab_emb = dict(zip(labeled.column("id").to_pylist(), io.list_matrix(labeled.column("embedding"))))
    for r in lt_rows:
        assert r["lookalike_score"] == pytest.approx(r["score"])
        e, s = np.asarray(r["embedding"]), lab_emb[r["seed_id"]]
        assert r["similarity"] == pytest.approx(e @ s / np.linalg.norm(e) / np.linalg.norm(s), abs=1e-5)
        assert r["seed_id"] in r["seed_ids"]
    assert all(r["seed_id"] is None and r["similarity"] is None for r in out.to_pylist() if r["strategy"] == "entropy")


def test_select_cli_passes_lsb_options(tmp_path, rng):
    labeled, pool = world(rng)
    write_table(labeled, tmp_path / "lab.parquet")
    write_table(pool, tmp_path / "pool.parquet")
    out = tmp_path / "sel.parquet"
    assert main(["select", str(tmp_path / "pool.parquet"), "--strategy", "entropy:0.5,lsb-lt:0.5", "--budget", "30",
                 "--labeled", str(tmp_path / "lab.parquet"), "--out", str(out), "--seed-threshold", "0.4",
                 "--seeds", "25", "--lookalike-threshold", "0.6", "--index", "flat", "--k", "7"]) == 0
    rows = [r for r in pq.read_table(out).to_pylist() if r["strategy"] == "lsb-lt"]
    ref = lsb(labeled, pool, max_seeds=25, seed_threshold=0.4, k=7, index="flat", lookalike_threshold=0.6)
    allowed = set(ref.candidates.column("id").to_pylist())
    assert rows and all(r["lookalike_score"] > 0.6 and r["neighbor_rank"] <= 7 for r in rows)
    assert {r["id"] for r in rows} <= allowed


def test_select_lsb_sizes_k_by_the_seeds_found(rng):
    from broaden.select import select

    labeled, pool = world(rng)
    few = seed_bad_cases(labeled, seed_threshold=0.62, max_seeds=None)
    n_seeds = few.num_rows
    assert 0 < n_seeds < 50  # far below the default cap of 1000 seeds
    budget = 12 * n_seeds  # more than k=10 neighbours per seed can ever give
    out = select(pool, "lsb", budget, labeled=labeled, seed_threshold=0.62, index="flat")
    k = max(10, -(-2 * budget // n_seeds))
    ref = lsb(labeled, pool, seed_threshold=0.62, k=k, index="flat").candidates
    sim = ref.column("similarity").to_numpy()
    ids = ref.column("id").to_numpy()
    order = np.lexsort((ids, -sim))[:budget]
    assert out.column("id").to_pylist() == ids[order].tolist()
