"""``--strategy auto`` (issue 20): the error-clustering diagnostic, leave-one-strategy-out values, the
allocation, and the Auto group of the simulation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from broaden.auto import allocate, diagnose, strategy_values
from broaden.auto.allocation import FLOOR, arm_of
from broaden.cli import main
from broaden.io import make_scored_table, write_table
from broaden.select import select


def labelled(rng, wrong_rows_fn, n=1200, clusters=20, d=16, C=3):
    centers = rng.normal(size=(clusters, d)) * 3
    c = rng.integers(0, clusters, n)
    x = (centers[c] + 0.6 * rng.normal(size=(n, d))).astype(np.float32)
    y = rng.integers(0, C, n)
    wrong = wrong_rows_fn(c, rng)
    pred = np.where(wrong, (y + 1) % C, y)
    probs = np.full((n, C), 0.05)
    probs[np.arange(n), pred] = 0.9
    return make_scored_table(np.arange(n), probs / probs.sum(1, keepdims=True), x, y), wrong


def brute_lift(table, k):
    x = np.stack(table.column("embedding").to_pylist()).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.asarray(table.column("label").to_pylist())
    p = np.stack(table.column("probs").to_pylist())
    bad = 1 - p[np.arange(len(y)), y] > 0.5
    sims = x[bad] @ x.T
    sims[np.arange(bad.sum()), np.flatnonzero(bad)] = -np.inf  # not itself
    nn = np.argsort(-sims, axis=1)[:, :k]
    return bad[nn].mean() / ((bad.sum() - 1) / (len(y) - 1))


def test_lift_is_about_one_at_random_and_large_for_planted_clusters(rng):
    random_t, _ = labelled(rng, lambda c, r: r.random(len(c)) < 0.1)
    d = diagnose(random_t, k=10, discrepancy="nominal")
    assert d.lift == pytest.approx(brute_lift(random_t, 10), rel=1e-6)
    assert 0.6 < d.lift < 1.4 and d.verdict == "isolated"
    planted_t, _ = labelled(rng, lambda c, r: np.isin(c, [3, 7]))
    d = diagnose(planted_t, k=10, discrepancy="nominal")
    assert d.lift == pytest.approx(brute_lift(planted_t, 10), rel=1e-6)
    assert d.lift > 5 and d.confident_share == 1.0 and d.verdict == "cluster" and "broadening" in d.reading


def test_diagnose_recent_partition_and_cli(rng, tmp_path, capsys):
    t, wrong = labelled(rng, lambda c, r: np.isin(c, [3, 7]))
    recent = np.arange(600, 1200)
    d = diagnose(t, recent=recent, discrepancy="nominal")
    assert d.n_recent == 600 and d.n_bad == int(wrong[recent].sum())
    write_table(t, tmp_path / "lab.parquet")
    assert main(["diagnose", str(tmp_path / "lab.parquet"), "--discrepancy", "nominal", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "cluster" and out["lift"] == pytest.approx(brute_lift(t, 10), rel=1e-6)
    assert main(["diagnose", str(tmp_path / "lab.parquet"), "--discrepancy", "nominal"]) == 0
    assert "errors cluster" in capsys.readouterr().out


def test_value_is_positive_for_a_useful_batch_and_zero_for_duplicates(rng):
    d, C = 8, 3
    centers = rng.normal(size=(6, d)) * 3
    def draw(clusters, n):
        c = rng.choice(clusters, n)
        return centers[c] + 0.5 * rng.normal(size=(n, d)), c % C
    X0, y0 = draw([0, 1, 2], 300)                     # what the model already knows
    Xu, yu = draw([3, 4, 5], 60)                      # a region it has never seen
    dup = rng.integers(0, 300, 90)                    # copies of labelled items (a bigger arm)
    Xe, ye = draw([0, 1, 2, 3, 4, 5], 600)
    X = np.vstack([X0, Xu, X0[dup]])
    y = np.concatenate([y0, yu, y0[dup]])
    strategies = [None] * 300 + ["useful"] * 60 + ["copies"] * 90
    v = strategy_values(X, y, strategies, Xe, ye, num_classes=C, draws=2)
    # Equal-size leave-n-out: both arms lose the smaller arm's size.
    assert v["useful"]["n"] == 60 and v["copies"]["n"] == 90
    assert v["useful"]["n_removed"] == v["copies"]["n_removed"] == 60
    assert v["useful"]["value"] > 1e-3 and v["useful"]["f1_value"] > 0 and v["useful"]["accuracy_value"] > 0
    assert v["useful"]["value"] > 3 * v["useful"]["se"] > 0          # far outside its own noise
    assert abs(v["copies"]["value"]) < 0.1 * v["useful"]["value"]
    assert abs(v["copies"]["value"]) < 3 * v["copies"]["se"] + 1e-12  # indistinguishable from nothing

    # The full model's value equals the hand computation: mean per-item log-loss increase per removed item.
    from sklearn.linear_model import LogisticRegression

    def fit(X_, y_):
        return LogisticRegression(max_iter=2000).fit(X_, y_)
    one = strategy_values(X, y, strategies, Xe, ye, fit=fit, num_classes=C, draws=1, n_remove=60, seed=5)
    keep = np.ones(len(y), bool)
    keep[np.random.default_rng(5).choice(np.arange(360, 450), 60, replace=False)] = False  # copies first
    ll = lambda m: -np.log(np.clip(m.predict_proba(Xe)[np.arange(len(ye)), ye], 1e-7, 1))
    diff = ll(fit(X[keep], y[keep])) - ll(fit(X, y))
    assert one["copies"]["value"] == pytest.approx(diff.mean() / 60, rel=1e-6)
    assert one["copies"]["se"] == pytest.approx(np.sqrt(diff.var() / len(ye)) / 60, rel=1e-6)
    with pytest.raises(ValueError, match="metric"):
        strategy_values(X, y, strategies, Xe, ye, metric="auc")


def test_allocation_follows_the_planted_value_and_keeps_its_floor():
    strong = [{"stat": {"value": 1e-4, "se": 2e-5}, "lsb-lt": {"value": 5e-4, "se": 2e-5}},
              {"stat": {"value": 1.2e-4, "se": 2e-5}, "lsb-lt": {"value": 4.5e-4, "se": 2e-5}}]
    a = allocate(["stat", "lsb-lt"], verdict="mixed", history=strong, floor=0.1, seed=3)
    assert a.shares["lsb-lt"] > 0.85 and a.shares["stat"] >= 0.1 - 1e-12
    assert sum(a.shares.values()) == pytest.approx(1.0)
    assert allocate(["stat", "lsb-lt"], verdict="mixed", history=strong, floor=0.1, seed=3).shares == a.shares
    flipped = allocate(["stat", "lsb-lt"], verdict="cluster", floor=0.2, seed=3,
                       history=[{"stat": v["lsb-lt"], "lsb-lt": v["stat"]} for v in strong])
    assert flipped.shares["stat"] > 0.75 and 0.2 - 1e-12 <= flipped.shares["lsb-lt"] < 0.25
    # Round 1: the diagnostic sets the starting shares.
    assert allocate(["stat", "lsb-lt"], verdict="cluster").shares["lsb-lt"] == pytest.approx(0.5)
    assert allocate(["stat", "lsb-lt"], verdict="isolated", floor=0.1).shares["lsb-lt"] == pytest.approx(0.1)
    # Noise: a difference well inside its standard error leaves the diagnostic's shares about where they were,
    # instead of drifting to an even split.
    noisy = [{"stat": {"value": 1e-4, "se": 5e-4}, "lsb-lt": {"value": 2e-4, "se": 5e-4}}]
    assert allocate(["stat", "lsb-lt"], verdict="isolated", history=noisy, seed=1).shares["lsb-lt"] < 0.2
    assert 0.4 < allocate(["stat", "lsb-lt"], verdict="cluster", history=noisy, seed=1).shares["lsb-lt"] < 0.65
    # Three rounds of pure noise (both arms equally useful): the budget stays with the default instead of
    # drifting to an even split, and the diagnostic's starting shares hold on average.
    def noise_only(verdict):
        shares = []
        for s in range(40):
            draw = np.random.default_rng(s).normal(1e-4, 2e-5, size=(3, 2))
            hist = [{"stat": {"value": a, "se": 2e-5}, "lsb-lt": {"value": b, "se": 2e-5}} for a, b in draw]
            shares.append(allocate(["stat", "lsb-lt"], verdict=verdict, history=hist, seed=s).shares["lsb-lt"])
        return np.mean(shares)

    assert noise_only("isolated") == pytest.approx(FLOOR)
    assert abs(noise_only("mixed") - 0.2) < 0.05
    # Decay: an old advantage fades when the latest rounds say otherwise.
    late = [{"stat": 1e-4, "lsb-lt": 9e-4}] + [{"stat": 3e-4, "lsb-lt": 1e-4}] * 3
    assert allocate(["stat", "lsb-lt"], history=late, decay=0.3, seed=0).shares["stat"] > 0.5
    assert arm_of("entropy") == "stat" and arm_of("lsb-lt") == "lsb-lt"
    with pytest.raises(ValueError):
        allocate(["stat", "nope"])


def test_select_auto_resolves_to_a_mix(rng):
    from tests.test_lsb import world

    labeled, pool = world(rng)
    out, reports = select(pool, "auto", 40, labeled=labeled, seed_threshold=0.4, index="flat", return_details=True)
    alloc = reports["auto"]["allocation"]
    assert out.num_rows == 40 and set(out.column("strategy").to_pylist()) <= {"least_confident", "margin",
                                                                              "entropy", "lsb-lt"}
    assert set(alloc.shares) == {"stat", "lsb-lt"} and sum(alloc.shares.values()) == pytest.approx(1)
    assert reports["auto"]["diagnosis"].verdict in ("cluster", "mixed", "isolated", "too-few")
    only_stat, rep = select(pool, "auto", 10, return_details=True)
    assert set(only_stat.column("strategy").to_pylist()) <= {"least_confident", "margin", "entropy"}
    assert rep["auto"]["allocation"].shares == {"stat": 1.0}


def test_auto_arms_choose_what_competes(rng):
    from broaden.errors import SelectionError
    from tests.test_lsb import world

    labeled, pool = world(rng)
    out, reports = select(pool, "auto", 40, labeled=labeled, auto_arms="stat,diverse", return_details=True)
    alloc = reports["auto"]["allocation"]
    # No history and no diagnostic for it: the diverse arm (diverse(entropy)) starts at the floor.
    assert alloc.shares == pytest.approx({"stat": 1 - FLOOR, "diverse": FLOOR})
    strategies = out.column("strategy").to_pylist()
    assert strategies.count("diverse(entropy)") == round(40 * FLOOR) and len(set(out.column("id").to_pylist())) == 40
    assert {arm_of(s) for s in strategies} == {"stat", "diverse"}
    history = [{"stat": {"value": 1e-4, "se": 1e-5}, "diverse": {"value": 6e-4, "se": 1e-5}}]
    later = select(pool, "auto", 40, labeled=labeled, auto_arms=["stat", "diverse"], auto_history=history,
                   return_details=True)[1]["auto"]["allocation"]
    assert later.shares["diverse"] > 0.9
    for bad in ("stat,nope", ""):
        with pytest.raises(SelectionError):
            select(pool, "auto", 10, labeled=labeled, auto_arms=bad)
    with pytest.raises(SelectionError, match="labelled set"):
        select(pool, "auto", 10, auto_arms="stat,lsb-lt")


@pytest.mark.parametrize("floor", [None, 0.3])
def test_simulation_auto_group_records_allocations(tmp_path, floor):
    from broaden.simulate import simulate
    from broaden.simulate.runner import SimulationError
    from tests.test_scenarios import CLF, planted

    data = planted()
    res = simulate(data, out=tmp_path, budget=60, initial=300, rounds=3, repeats=1, k=5, classifier=CLF,
                   scenario="drift", subpop="column:group=g3", relabel_to=0, recent=150, recent_subpop=12,
                   groups=["Stat-AL", "Auto"], lookalike_threshold=0.3, validation=200, print_results=False,
                   show_progress=False, auto_floor=floor)
    rec = json.loads((tmp_path / "repeats" / "repeat-000.json").read_text())
    least = FLOOR if floor is None else floor
    for rnd in rec["rounds"]:
        auto = rnd["groups"]["Auto"]["auto"]
        assert sum(auto["shares"].values()) == pytest.approx(1) and min(auto["shares"].values()) >= least - 1e-9
    # the default floor stays out of config.json, so runs from before the setting keep their hash
    assert json.loads((tmp_path / "config.json").read_text()).get("auto_floor") == floor
    if floor is not None:
        assert max(auto["shares"].values()) <= 1 - floor + 1e-9
        with pytest.raises(SimulationError, match="auto_floor must be within 0 … 1"):
            simulate(data, out=tmp_path / "bad", groups=["Auto"], auto_floor=1.5, print_results=False)
        assert set(auto["values"]) <= {"stat", "lsb-lt"}
    assert rec["diagnosis"]["verdict"] in ("cluster", "mixed", "isolated", "too-few")
    assert [e["round"] for e in res["auto"]["Auto"]] == [1, 2, 3]


def test_select_cli_auto_floor_is_the_api_option(rng, tmp_path):
    import pyarrow.parquet as pq

    from tests.test_lsb import world

    labeled, pool = world(rng)
    write_table(pool, tmp_path / "pool.parquet")
    write_table(labeled, tmp_path / "lab.parquet")
    api, rep = select(pool, "auto", 40, labeled=labeled, seed_threshold=0.4, index="flat", auto_floor=0.4,
                      return_details=True)
    assert min(rep["auto"]["allocation"].shares.values()) >= 0.4 - 1e-12
    assert main(["select", str(tmp_path / "pool.parquet"), "--strategy", "auto", "--budget", "40", "--labeled",
                 str(tmp_path / "lab.parquet"), "--seed-threshold", "0.4", "--index", "flat", "--auto-floor", "0.4",
                 "--out", str(tmp_path / "out.parquet")]) == 0
    cli = pq.read_table(tmp_path / "out.parquet")
    assert cli.column("id").to_pylist() == api.column("id").to_pylist()
