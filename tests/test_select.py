"""Statistical selection: scores vs hand values and modAL, top-k vs a brute-force reference, mixes,
exclusion, streaming over many files, the CLI."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.errors import BroadenError, ScoredTableError
from broaden.io import Columns, make_scored_table, matrix_to_list_array
from broaden.select import (
    SelectionError, TopK, entropy, kl_to_consensus, largest_remainder, least_confident, margin,
    parse_spec, random_keys, read_ids, register_strategy, select, top_k_indices, vote_entropy,
)
from broaden.select import registry


# ------------------------------------------------------------------------------------ reference
def ref_entropy(p):
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)


def ref_margin(p):
    s = np.sort(np.asarray(p, dtype=np.float64), axis=1)
    return s[:, -1] - s[:, -2]


def ref_lc(p):
    return 1.0 - np.asarray(p, dtype=np.float64).max(axis=1)


def brute_top(scores, ids, k):
    """Independent reference: Python sort on (−score, id) tuples."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]]


def tied_pool(rng, n=3000, c=4, distinct=6, string_ids=False):
    """Only a few distinct probability rows, so scores tie massively; ids shuffled and gapped."""
    rows = rng.dirichlet(np.ones(c), size=distinct).astype(np.float32)
    probs = rows[rng.integers(0, distinct, size=n)]
    ids = rng.permutation(n) * 7 + 3
    if string_ids:
        ids = np.array([f"item-{i}" for i in ids])
    return make_scored_table(ids, probs), ids, probs


# ------------------------------------------------------------------------------ scores by hand
def test_scores_match_hand_computation():
    p = np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    assert least_confident(p) == pytest.approx([0.5, 0.0, 0.5])
    assert margin(p) == pytest.approx([0.2, 1.0, 0.25])
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert entropy(p) == pytest.approx([h, 0.0, -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))])


def test_committee_scores_match_hand_computation():
    a = np.array([[0.9, 0.1], [0.6, 0.4], [1.0, 0.0]])
    b = np.array([[0.8, 0.2], [0.3, 0.7], [0.0, 1.0]])
    c = np.array([[0.7, 0.3], [0.2, 0.8], [1.0, 0.0]])
    # votes: row0 all class 0; row1 0,1,1; row2 0,1,0
    two_thirds = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert vote_entropy([a, b, c]) == pytest.approx([0.0, two_thirds, two_thirds])
    # KL to consensus of [1,0] and [0,1]: consensus [.5,.5], each KL = ln 2
    kl = kl_to_consensus([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])])
    assert kl == pytest.approx([math.log(2)])
    # identical members never disagree
    assert kl_to_consensus([a, a]) == pytest.approx([0, 0, 0], abs=1e-12)


def test_scores_agree_with_modal_helpers(rng):
    from modAL.uncertainty import _proba_entropy, _proba_margin, _proba_uncertainty

    p = rng.dirichlet(np.ones(5), size=500)
    np.testing.assert_allclose(least_confident(p), _proba_uncertainty(p), atol=1e-12)
    np.testing.assert_allclose(margin(p), _proba_margin(p), atol=1e-12)
    np.testing.assert_allclose(entropy(p), _proba_entropy(p), atol=1e-12)


class _FixedProba:
    """A fitted-looking classifier whose predict_proba returns stored rows for index inputs."""

    def __init__(self, probs):
        self.probs = probs

    def predict_proba(self, X):
        return self.probs[np.asarray(X).ravel()]


@pytest.mark.parametrize("name", ["least_confident", "margin", "entropy"])
def test_selection_agrees_with_modal_sampling(rng, name):
    from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling

    sampler = {"least_confident": uncertainty_sampling, "margin": margin_sampling,
               "entropy": entropy_sampling}[name]
    probs = rng.dirichlet(np.ones(4), size=2000).astype(np.float32)
    ids = np.arange(2000)
    out = select(make_scored_table(ids, probs), name, 50)
    idx, _ = sampler(_FixedProba(probs.astype(np.float64)), ids.reshape(-1, 1), n_instances=50)
    assert set(out.column("id").to_pylist()) == set(ids[np.asarray(idx)].tolist())


# ------------------------------------------------------------------------------------ top-k helper
@pytest.mark.parametrize("string_ids", [False, True])
def test_topk_streaming_matches_brute_force_with_ties(rng, string_ids):
    n = 4000
    scores = rng.integers(0, 5, size=n).astype(float)  # massive ties
    ids = rng.permutation(n) * 3 + 1
    if string_ids:
        ids = np.array([f"x{i}" for i in ids])
    for k in (1, 37, 800, n, n + 5):
        top = TopK(k)
        for start in range(0, n, 333):
            top.push(scores[start:start + 333], ids[start:start + 333])
        got, got_scores = top.result()
        assert got.tolist() == brute_top(scores.tolist(), ids.tolist(), k)
        assert got_scores.tolist() == sorted(scores.tolist(), reverse=True)[:k]


def test_topk_extra_rides_along_and_rejects_nan(rng):
    scores = rng.random(100)
    ids = np.arange(100)
    top = TopK(10)
    top.push(scores[:50], ids[:50], extra=ids[:50] * 10)
    top.push(scores[50:], ids[50:], extra=ids[50:] * 10)
    got, _ = top.result()
    assert (top.extra() == got * 10).all()
    with pytest.raises(ValueError, match="NaN"):
        TopK(3).push(np.array([0.1, np.nan]), np.array([1, 2]))
    sel = top_k_indices(np.array([1.0, 2.0, 2.0, 0.5]), np.array([9, 8, 7, 6]), 2)
    assert sorted(sel.tolist()) == [1, 2]


# ----------------------------------------------------------------------- strategies vs reference
@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("name,ref,higher", [("entropy", ref_entropy, True), ("margin", ref_margin, False),
                                               ("least_confident", ref_lc, True)])
def test_selected_ids_equal_numpy_reference_on_tied_pool(rng, name, ref, higher, string_ids):
    table, ids, probs = tied_pool(rng, string_ids=string_ids)
    s = ref(probs)
    key = s if higher else -s
    for budget in (1, 150, 999):
        out = select(table, name, budget, batch_size=256)
        expected = brute_top(key.tolist(), ids.tolist(), budget)
        assert out.column("id").to_pylist() == expected
        assert out.column("rank").to_pylist() == list(range(1, budget + 1))
        assert set(out.column("strategy").to_pylist()) == {name}
        np.testing.assert_allclose(out.column("score").to_numpy(), s[np.argsort(ids)][np.searchsorted(np.sort(ids), expected)])


def test_budget_larger_than_pool_is_an_error(rng):
    table, ids, _ = tied_pool(rng, n=100)
    with pytest.raises(SelectionError, match="budget 101 is larger than the eligible pool: 100 rows"):
        select(table, "entropy", 101)
    with pytest.raises(SelectionError, match="20 of them excluded, 80 eligible"):
        select(table, "entropy", 81, exclude=ids[:20])
    assert select(table, "entropy", 80, exclude=ids[:20]).num_rows == 80
    with pytest.raises(SelectionError, match="positive integer"):
        select(table, "entropy", 0)
    with pytest.raises(SelectionError, match="batch size must be a positive integer, got 0"):
        select(table, "entropy", 5, batch_size=0)


def test_qbc_matches_reference_measures(rng):
    n = 1500
    members = [rng.dirichlet(np.ones(3) * 0.7, size=n).astype(np.float32) for _ in range(3)]
    ids = rng.permutation(n)
    table = make_scored_table(ids, members[0], extra={f"m{i}": matrix_to_list_array(m) for i, m in enumerate(members)})
    m64 = [m.astype(np.float64) for m in members]
    votes = np.stack([m.argmax(1) for m in m64])
    frac = np.stack([(votes == c).mean(0) for c in range(3)], axis=1)
    ve = ref_entropy(frac)
    cons = np.mean(m64, axis=0)
    kl = np.mean([(m * np.log(m / cons)).sum(1) for m in m64], axis=0)
    out = select(table, "qbc", 100, committee_cols="m0,m1,m2")
    assert out.column("id").to_pylist() == brute_top(ve.tolist(), ids.tolist(), 100)
    out = select(table, "qbc", 100, committee_cols=["m0", "m1", "m2"], qbc_measure="kl")
    assert set(out.column("id").to_pylist()) == set(brute_top(kl.tolist(), ids.tolist(), 100))
    with pytest.raises(SelectionError, match="committee"):
        select(table, "qbc", 10, committee_cols="m0")
    four = table.append_column("m4", matrix_to_list_array(rng.dirichlet(np.ones(4), size=n)))
    with pytest.raises(SelectionError, match="same number of classes; got 'm0': 3, 'm4': 4"):
        select(four, "qbc", 10, committee_cols="m0,m4")


def test_random_is_seeded_uniform_and_layout_independent(rng):
    from scipy.stats import kstest

    keys = random_keys(np.arange(20000), seed=3)
    assert kstest(keys, "uniform").pvalue > 1e-3
    assert (random_keys(np.arange(5), 3) == keys[:5]).all()
    assert not np.allclose(random_keys(np.arange(5), 4), keys[:5])
    skeys = random_keys(np.array(["a", "bb", "ccc", "a"]), 1)
    assert skeys[0] == skeys[3] and len(set(skeys[:3])) == 3
    table, ids, _ = tied_pool(rng, n=500)
    a = select(table, "random", 50, seed=7)
    b = select(pa.concat_tables([table.slice(250), table.slice(0, 250)]), "random", 50, seed=7)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert a.column("id").to_pylist() != select(table, "random", 50, seed=8).column("id").to_pylist()


# ---------------------------------------------------------------------------------------- mixes
def test_parse_spec_and_largest_remainder():
    assert parse_spec("entropy:0.6,margin:0.2,random:0.2") == [("entropy", 0.6), ("margin", 0.2), ("random", 0.2)]
    assert parse_spec("entropy") == [("entropy", 1.0)]
    assert parse_spec({"lsb-lt": 0.5, "entropy": 0.5}) == [("lsb-lt", 0.5), ("entropy", 0.5)]
    assert parse_spec("a,b") == [("a", 0.5), ("b", 0.5)]
    for bad in ("entropy:0.6,margin:0.2", "entropy:0.5,entropy:0.5", "entropy:x", "entropy:0.5,margin", ""):
        with pytest.raises(SelectionError):
            parse_spec(bad)
    # Hamilton: 7 × (.6,.2,.2) = 4.2, 1.4, 1.4 → floors 4,1,1, one left → the .4 remainders tie → first wins
    assert largest_remainder(7, [0.6, 0.2, 0.2]).tolist() == [4, 2, 1]
    assert largest_remainder(10, [1 / 3] * 3).tolist() == [4, 3, 3]
    assert largest_remainder(101, [0.5, 0.25, 0.25]).tolist() == [51, 25, 25]
    assert largest_remainder(7, [0.6, 0.2, 0.2]).sum() == 7


def test_mix_respects_shares_and_dedups(rng):
    n = 2000
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    ids = rng.permutation(n) + 100
    table = make_scored_table(ids, probs)
    excl = ids[:50]
    out = select(table, "entropy:0.6,margin:0.2,random:0.2", 101, exclude=excl, seed=5)
    got = out.column("id").to_pylist()
    strat = out.column("strategy").to_pylist()
    assert len(got) == len(set(got)) == 101
    assert not set(got) & set(excl.tolist())
    assert [strat.count(s) for s in ("entropy", "margin", "random")] == [61, 20, 20]
    # reference: each strategy = its own ranking minus excluded and earlier strategies' picks
    eligible = ~np.isin(ids, excl)
    e_ref = brute_top(np.where(eligible, ref_entropy(probs), -np.inf).tolist(), ids.tolist(), 61)
    taken = set(e_ref) | set(excl.tolist())
    m_key = np.where([i not in taken for i in ids.tolist()], -ref_margin(probs), -np.inf)
    m_ref = brute_top(m_key.tolist(), ids.tolist(), 20)
    assert got[:61] == e_ref and got[61:81] == m_ref
    # entropy and margin overlap heavily, so margin really had to skip entropy's picks
    assert len(set(brute_top((-ref_margin(probs)).tolist(), ids.tolist(), 20)) & set(e_ref)) > 0
    assert out.column("rank").to_pylist() == list(range(1, 62)) + list(range(1, 21)) * 2


def test_mix_shortfall_flows_to_later_then_earlier_strategies(rng, monkeypatch):
    registry.available_strategies()  # register the plugin strategies in the real registry before copying it
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_strategy("five", lambda pool, n, ctx: _five(n, ctx))
    table = make_scored_table(np.arange(200), rng.dirichlet(np.ones(3), size=200))
    out = select(table, "five:0.5,entropy:0.5", 20)
    assert out.column("strategy").to_pylist().count("five") == 5
    assert out.column("strategy").to_pylist().count("entropy") == 15
    out2 = select(table, "entropy:0.5,five:0.5", 20)
    strat = out2.column("strategy").to_pylist()
    assert strat == ["entropy"] * 15 + ["five"] * 5  # the refill is grouped with its strategy
    assert out2.column("rank").to_pylist()[:15] == list(range(1, 16))
    assert len(set(out2.column("id").to_pylist())) == 20
    with pytest.raises(SelectionError, match="found only 5 eligible items for a budget of 20"):
        select(table, "five", 20)


def test_plugin_returning_an_id_outside_the_pool_is_an_error(rng, monkeypatch):
    registry.available_strategies()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    # 7 is a pool id, 1000 is not: without the check the output row for 1000 was another pool row
    register_strategy("ghost", lambda pool, n, ctx: (np.array([7, 1000]), np.array([2.0, 1.0])))
    table = make_scored_table(np.arange(50), rng.dirichlet(np.ones(3), size=50))
    with pytest.raises(SelectionError, match="1 requested id\\(s\\) are not in the pool, e.g. 1000"):
        select(table, "ghost", 2)


def _five(n, ctx):
    cand = np.array([1, 2, 3, 4, 5])
    cand = cand[~ctx.exclude.contains(cand)][:n]
    return cand, np.ones(len(cand))


def test_needs_labeled_and_unknown_strategy(rng, monkeypatch):
    registry.available_strategies()  # register the plugin strategies in the real registry before copying it
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_strategy("needy", lambda pool, n, ctx: (np.array([0]), np.array([1.0])), needs_labeled=True)
    table = make_scored_table(np.arange(10), rng.dirichlet(np.ones(3), size=10))
    with pytest.raises(SelectionError, match="needs the labelled set: pass labeled="):
        select(table, "needy", 1)
    with pytest.raises(SelectionError, match="unknown strategy 'nope'; available: .*entropy"):
        select(table, "nope", 1)


# ------------------------------------------------------------------------------- files & streaming
def test_many_small_files_equal_one_file(tmp_path, rng):
    table, ids, _ = tied_pool(rng, n=2500)
    table = table.append_column("note", pa.array([f"n{i}" for i in range(table.num_rows)]))
    pq.write_table(table, tmp_path / "one.parquet")
    parts = tmp_path / "parts"
    parts.mkdir()
    cuts = [0, 1, 50, 51, 700, 1333, 2000, 2499, 2500]
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        pq.write_table(table.slice(a, b - a), parts / f"part-{i:02d}.parquet", row_group_size=97)
    for spec in ("entropy", "margin:0.5,random:0.3,least_confident:0.2"):
        one = select(tmp_path / "one.parquet", spec, 333, seed=2)
        many = select(parts, spec, 333, seed=2, batch_size=64)
        assert one.equals(many)
        assert one.column_names == ["id", "strategy", "score", "rank", "probs", "note"]
        mem = select(table, spec, 333, seed=2)
        assert mem.column("id").to_pylist() == one.column("id").to_pylist()
        # joined-back columns belong to the selected row
        note = dict(zip(ids.tolist(), table.column("note").to_pylist()))
        assert one.column("note").to_pylist() == [note[i] for i in one.column("id").to_pylist()]


def test_exclude_files_txt_parquet_csv(tmp_path, rng):
    table, ids, _ = tied_pool(rng, n=300)
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    drop = ids[:40]
    (tmp_path / "ex.txt").write_text("# already labelled\n" + "\n".join(map(str, drop)) + "\n\n")
    # a null id (an empty cell) excludes nothing, in Parquet as in CSV
    pq.write_table(pa.table({"id": pa.array(drop.tolist() + [None]), "other": pa.array((drop * 2).tolist() + [0])}),
                   tmp_path / "ex.parquet")
    (tmp_path / "ex.csv").write_text("id,who\n" + "\n".join(f"{i},x" for i in drop))
    ref = select(path, "entropy", 260, exclude=set(drop.tolist())).column("id").to_pylist()
    assert not set(ref) & set(drop.tolist())
    for name in ("ex.txt", "ex.parquet", "ex.csv"):
        assert select(path, "entropy", 260, exclude=tmp_path / name).column("id").to_pylist() == ref
    assert sorted(read_ids(tmp_path / "ex.parquet").tolist()) == sorted(drop.tolist())


def test_bad_pool_errors_name_file_column_row(tmp_path, rng):
    probs = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
    probs[13, 1] = np.nan
    pq.write_table(make_scored_table(np.arange(20), probs), tmp_path / "nan.parquet")
    with pytest.raises(ScoredTableError, match=r"nan.parquet: column 'probs' row 13"):
        select(tmp_path / "nan.parquet", "entropy", 5)
    d = tmp_path / "dup"
    d.mkdir()
    good = rng.dirichlet(np.ones(3), size=10)
    pq.write_table(make_scored_table(np.arange(10), good), d / "a.parquet")
    pq.write_table(make_scored_table(np.arange(5, 15), good), d / "b.parquet")
    with pytest.raises(ScoredTableError, match="duplicate id"):
        select(d, "entropy", 5)
    with pytest.raises(SelectionError, match="missing column"):
        select(make_scored_table(np.arange(10), good), "entropy", 5, columns=Columns(probs="p"))


def test_pool_columns_named_like_outputs_are_kept(rng):
    table = make_scored_table(np.arange(30), rng.dirichlet(np.ones(2), size=30), extra={"score": list(range(30))})
    out = select(table, "margin", 5)
    assert out.column_names == ["id", "strategy", "score", "rank", "probs", "pool_score"]
    assert out.column("pool_score").to_pylist() == out.column("id").to_pylist()


# ------------------------------------------------------------------------------------------ CLI
def test_cli_select_writes_same_table_as_api(tmp_path, rng, capsys):
    table, ids, _ = tied_pool(rng, n=400)
    pool = tmp_path / "pool.parquet"
    pq.write_table(table, pool)
    out = tmp_path / "sel" / "out.parquet"
    rc = main(["select", str(pool), "--strategy", "entropy:0.5,random:0.5", "--budget", "40", "--out", str(out),
               "--seed", "3"])
    assert rc == 0 and "wrote 40 rows" in capsys.readouterr().out
    assert pq.read_table(out).equals(select(pool, "entropy:0.5,random:0.5", 40, seed=3))
    rc = main(["select", str(pool), "--strategy", "entropy", "--budget", "401", "--out", str(out)])
    assert rc == 2 and "larger than the eligible pool" in capsys.readouterr().err
    assert pq.read_table(out).num_rows == 40  # a failed run leaves the previous output untouched


def test_cli_select_qbc_and_custom_columns(tmp_path, rng):
    n = 300
    a, b = (rng.dirichlet(np.ones(3), size=n).astype(np.float32) for _ in range(2))
    t = pa.table({"key": np.arange(n), "pa": matrix_to_list_array(a), "pb": matrix_to_list_array(b)})
    pq.write_table(t, tmp_path / "p.parquet")
    out = tmp_path / "o.parquet"
    assert main(["select", str(tmp_path / "p.parquet"), "--strategy", "qbc", "--budget", "7", "--out", str(out),
                 "--committee-cols", "pa,pb", "--qbc-measure", "kl", "--id-col", "key", "--probs-col", "pa"]) == 0
    got = pq.read_table(out)
    assert got.column_names[:4] == ["key", "strategy", "score", "rank"]
    kl = kl_to_consensus([a, b])
    assert got.column("key").to_pylist() == brute_top(kl.tolist(), list(range(n)), 7)


def test_selection_error_is_a_broaden_error():
    assert issubclass(SelectionError, BroadenError)


def test_a_named_engine_is_created_once_per_call_and_closed(monkeypatch, tmp_path):
    """select(engine="...") resolves the name once for the whole call and closes what it created."""
    import broaden.engines as engines
    from broaden.engines.local import LocalEngine
    from broaden.io import make_scored_table

    made, closed = [], []

    class Counting(LocalEngine):
        def close(self):
            closed.append(self)

    real = engines.get_engine

    def fake(name="local", address=None, **options):
        if name == "counting":
            made.append(Counting())
            return made[-1]
        return real(name, address, **options)

    monkeypatch.setattr(engines, "get_engine", fake)
    rng = np.random.default_rng(3)
    pool = make_scored_table(np.arange(500), rng.dirichlet(np.ones(3), 500), None)
    out = select(pool, "entropy:0.5,margin:0.3,random:0.2", 50, engine="counting")
    assert out.num_rows == 50
    assert len(made) == 1 and closed == made
    given = Counting()
    select(pool, "entropy", 10, engine=given)
    assert given not in closed  # an engine object passed in belongs to the caller


def test_a_pool_file_whose_rows_are_all_excluded_is_skipped(rng, tmp_path):
    """Every row of one file labelled (or excluded): nothing of it to score, and the rest still ranks."""
    probs = rng.dirichlet(np.ones(3), size=40)
    done = make_scored_table(np.arange(20), probs[:20], labels=[0] * 20)
    fresh = make_scored_table(np.arange(20, 40), probs[20:], labels=[None] * 20)
    (tmp_path / "pool").mkdir()
    pq.write_table(done, tmp_path / "pool" / "a.parquet")
    pq.write_table(fresh, tmp_path / "pool" / "b.parquet")
    out = select(tmp_path / "pool", "entropy", 5)
    assert out.column("id").to_pylist() == brute_top(ref_entropy(probs[20:]).tolist(), list(range(20, 40)), 5)
    assert select(tmp_path / "pool", "margin", 5, exclude=range(20, 25)).num_rows == 5
