"""Drift and blind-spot scenarios (issue 18) on a tiny generated dataset: S by each method, relabelling
only on S, the recent batch's exact composition, S captured recomputed from the files, the refit control."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.simulate import SimData, build_groups, simulate
from broaden.simulate.groups import GroupError
from broaden.simulate.protocol import macro_auc, subpop_metrics
from broaden.simulate.scenario import Scenario, ScenarioError, split_rows, subpopulation

CLF = {"hidden": (16,), "max_epochs": 15, "patience": 3}
WORDS = ["galaxy", "orbit", "rocket", "market", "stocks", "match", "league", "vote", "senate", "court"]


def planted(seed=0, n=1500, d=8) -> SimData:
    """Three classes; class 1 has a tight cluster (cluster id 3) of 'space' items far from the rest."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, d)) * 4
    cluster = rng.integers(0, 5, n)
    y = np.array([0, 1, 2, 1, 1])[cluster]  # clusters 1, 3, 4 are class 1
    x = centers[cluster] + 0.5 * rng.normal(size=(n, d))
    texts = [f"{'galaxy orbit' if c == 3 else WORDS[3 + c]} news {i}" for i, c in enumerate(cluster)]
    data = SimData("planted", np.array([f"id{i:05d}" for i in range(n)]), y, x, rng.random(n) < 0.2, 3,
                   class_names=("world", "scitech", "sports"), task="multiclass", texts=texts)
    data.columns = {"group": np.array([f"g{c}" for c in cluster])}
    data.cluster = cluster
    return data


def test_subpopulation_by_each_method(tmp_path):
    data = planted()
    truth = data.cluster == 3
    assert np.array_equal(subpopulation(data, "keyword:scitech:galaxy|orbit"), truth)
    assert np.array_equal(subpopulation(data, "keyword:*:GALAXY"), truth)  # case-insensitive, any class
    assert np.array_equal(subpopulation(data, "column:group=g3"), truth)
    (tmp_path / "ids.txt").write_text("\n".join(data.ids[truth]) + "\n")
    assert np.array_equal(subpopulation(data, f"ids:{tmp_path / 'ids.txt'}"), truth)
    # k-means of class 1 into 3 clusters recovers the planted clusters: one of them is exactly S.
    found = [subpopulation(data, f"kmeans:1:3:{c}") for c in range(3)]
    assert any(np.array_equal(m, truth) for m in found)
    assert not np.any(np.sum(found, axis=0) > 1) and np.array_equal(np.any(found, axis=0), data.labels == 1)
    for bad in ("kmeans:1:3", "keyword:nope:x", "column:missing=1", "what:x", "keyword:1:(", "kmeans:1:3:7"):
        with pytest.raises(ScenarioError):
            subpopulation(data, bad)
    with pytest.raises(ScenarioError, match="empty"):
        subpopulation(data, "keyword:*:zzzz")


def test_scenario_settings_are_checked():
    with pytest.raises(ScenarioError, match="relabel_to"):
        Scenario("drift", "keyword:*:x", recent=10)
    with pytest.raises(ScenarioError, match="recent"):
        Scenario("blindspot", "keyword:*:x")
    with pytest.raises(ScenarioError, match="sub-population"):
        Scenario("blindspot", recent=10)
    with pytest.raises(ScenarioError):
        Scenario("iid", relabel_to=1)


@pytest.mark.parametrize("kind", ["drift", "blindspot"])
def test_split_composition_is_exact(kind):
    data = planted()
    s = data.cluster == 3
    sc = Scenario(kind, "column:group=g3", relabel_to=0 if kind == "drift" else None, recent=150, recent_subpop=12)
    split = split_rows(data, sc, s, initial=300, needed_pool=100, pool_size=None, rng=np.random.default_rng(1))
    parts = [split.initial, split.recent, split.pool, split.test]
    assert sum(map(len, parts)) == len(data.ids) and len(np.unique(np.concatenate(parts))) == len(data.ids)
    assert not data.is_test[np.concatenate(parts[:3])].any() and data.is_test[split.test].all()
    assert len(split.recent) == 162 and s[split.recent].sum() == 12
    assert (s[split.initial].sum() == 0) == (kind == "blindspot")


def test_iid_split_draws_as_before():
    """Without a recent batch the i.i.d. split makes the same generator calls as the old protocol."""
    data = planted()
    split = split_rows(data, Scenario(), None, initial=300, needed_pool=100, pool_size=500,
                       rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    train = np.flatnonzero(~data.is_test)
    initial = np.sort(rng.choice(train, 300, replace=False))
    pool = np.sort(rng.choice(np.setdiff1d(train, initial), 500, replace=False))
    assert np.array_equal(split.initial, initial) and np.array_equal(split.pool, pool)


def test_subpop_metrics_by_hand():
    labels = np.array([0, 1, 1, 2, 1, 0])
    probs = np.array([[.8, .1, .1], [.2, .7, .1], [.6, .3, .1], [.1, .1, .8], [.3, .3, .4], [.1, .8, .1]])
    in_s = np.array([False, True, True, False, True, False])
    m = subpop_metrics(labels, probs, in_s)
    assert m["s_accuracy"] == pytest.approx(1 / 3)       # rows 1 ok, 2 and 4 wrong
    assert m["s_recall"] == pytest.approx(2 / 3)         # 1 - p0 >= 0.5 on rows 1, 4 (row 2: 0.4)
    assert m["non_s_accuracy"] == pytest.approx(2 / 3)   # rows 0, 3 right, 5 wrong
    from sklearn.metrics import roc_auc_score

    assert macro_auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def test_groups_with_refit_and_shares():
    groups = build_groups(include=["Stat-AL", "Stat-AL (refit)", "Stat-AL+LSB-LT@0.5", "HW (refit)",
                                   "Stat-AL+LSB-LT@0.5 (refit)", "Auto (refit)"])
    by = {g.name: g for g in groups}
    assert by["Stat-AL (refit)"].refit and by["Stat-AL (refit)"].kind == "stat"
    assert by["Stat-AL+LSB-LT@0.5"].lsb_share == 0.5 and by["Stat-AL+LSB-LT@0.5"].lookalike
    assert by["Stat-AL+LSB-LT@0.5 (refit)"].refit and by["Stat-AL+LSB-LT@0.5 (refit)"].lsb_share == 0.5
    assert by["Auto (refit)"].refit and by["Auto (refit)"].kind == "auto"
    for bad in ("Stat-AL@0.5", "Random (refit)", "Stat-AL+LSB-LT@2", "Nope (refit)"):
        with pytest.raises(GroupError):
            build_groups(include=[bad])


def test_groups_named_as_the_tables_print_variants():
    # A variant group listed by the name the tables print equals the one --variants adds.
    listed = build_groups(include=["Stat-AL", "Stat-AL+LSB-LT[frozen]", "Stat-AL+LSB-LT[lt-ranked]@0.5"])
    by_variant = {g.name: g for g in build_groups(include=["Stat-AL"], variants="frozen,lt-ranked")}
    assert listed[1] == by_variant["Stat-AL+LSB-LT[frozen]"]
    assert listed[2].rank_by == "lookalike" and listed[2].lsb_share == 0.5 and not listed[2].lookalike
    finetuned = build_groups(latent="finetuned", include=["Stat-AL", "Stat-AL+LSB-LT[tuned]"])
    assert finetuned[1].latent == "tuned"
    for bad in ("Stat-AL[frozen]", "Stat-AL+LSB-LT[nope]", "Stat-AL+LSB-LT[tuned]"):  # tuned is the default latent
        with pytest.raises(GroupError):
            build_groups(include=[bad])


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("drift")
    data = planted()
    results = simulate(data, out=out, budget=60, initial=300, rounds=2, repeats=2, k=5, lsb_share=0.5,
                       classifier=CLF, scenario="drift", subpop="column:group=g3", relabel_to="world", recent=150,
                       recent_subpop=12, groups=["Stat-AL", "Stat-AL (refit)", "Stat-AL+LSB-LT@0.5"],
                       lookalike_threshold=0.3, print_results=False, show_progress=False)
    return out, data, results


def test_drift_relabels_only_s_and_keeps_stale_initial_labels(drift_run):
    out, data, results = drift_run
    s = data.cluster == 3
    saved = set(pq.read_table(out / "subpop.parquet").column("id").to_pylist())
    assert saved == set(data.ids[s]) and results["config"]["subpop_size"] == s.sum()
    ids = {i: k for k, i in enumerate(data.ids)}
    for r in results["repeats_done"]:
        init = pq.read_table(out / f"repeats/repeat-{r:03d}/initial.parquet").to_pandas()
        rows = init.id.map(ids).to_numpy()
        in_s = s[rows]
        assert (init.in_subpop.to_numpy() == in_s).all()
        # True labels: S relabelled to class 0 ("world"), everything else unchanged.
        assert (init.label[in_s] == 0).all() and (init.label[~in_s].to_numpy() == data.labels[rows[~in_s]]).all()
        initial_s = in_s & (init.part == "initial").to_numpy()
        recent_s = in_s & (init.part == "recent").to_numpy()
        assert initial_s.any() and (init.oracle_label[initial_s].to_numpy() == 1).all()   # stale label kept
        assert recent_s.sum() == 12 and (init.oracle_label[recent_s] == 0).all()         # the new label
        preds = pq.read_table(out / f"repeats/repeat-{r:03d}/test_predictions.parquet").to_pandas()
        prow = preds.id.map(ids).to_numpy()
        assert (preds.label.to_numpy() == np.where(s[prow], 0, data.labels[prow])).all()


def test_s_captured_recomputed_from_the_files(drift_run):
    out, data, results = drift_run
    s_ids = set(pq.read_table(out / "subpop.parquet").column("id").to_pylist())
    train_s = {i for i, t in zip(data.ids, data.is_test) if not t and i in s_ids}
    for g in results["groups"]:
        vals = results["table1"][g]["s_captured"]["values"]
        for k, r in enumerate(results["repeats_done"]):
            init = pq.read_table(out / f"repeats/repeat-{r:03d}/initial.parquet").to_pandas()
            sel = pq.read_table(out / f"repeats/repeat-{r:03d}/selections.parquet").to_pandas()
            picked = set(sel[(sel.group == g) & (sel["round"] == 1)].id)
            pool_s = train_s - set(init.id)
            assert vals[k] == pytest.approx(len(picked & s_ids) / len(pool_s))


def test_lsb_seeds_come_from_the_recent_batch_and_refit_differs(drift_run):
    out, data, results = drift_run
    for r in results["repeats_done"]:
        init = pq.read_table(out / f"repeats/repeat-{r:03d}/initial.parquet").to_pandas()
        sel = pq.read_table(out / f"repeats/repeat-{r:03d}/selections.parquet").to_pandas()
        recent = set(init.id[init.part == "recent"])
        lsb = sel[(sel.group == "Stat-AL+LSB-LT@0.5") & (sel["round"] == 1) & (sel.strategy == "lsb-lt")]
        assert len(lsb) and set(lsb.seed_id) <= recent
        assert len(sel[(sel.group == "Stat-AL+LSB-LT@0.5") & (sel["round"] == 1)]) == 60
        a = set(sel[(sel.group == "Stat-AL") & (sel["round"] == 1)].id)
        b = set(sel[(sel.group == "Stat-AL (refit)") & (sel["round"] == 1)].id)
        assert a != b  # the refit model ranks the pool differently
        # Round 2 seeds come from round 1's batch of the same group.
        lsb2 = sel[(sel.group == "Stat-AL+LSB-LT@0.5") & (sel["round"] == 2) & (sel.strategy == "lsb-lt")]
        first = set(sel[(sel.group == "Stat-AL+LSB-LT@0.5") & (sel["round"] == 1)].id)
        assert set(lsb2.seed_id.dropna()) <= first


def test_resume_reads_s_back_and_cli_lists_clusters(drift_run, tmp_path, capsys):
    out, data, results = drift_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["scenario"] == {"kind": "drift", "subpop": "column:group=g3", "relabel_to": 0, "recent": 150,
                               "recent_subpop": 12}
    again = simulate(data, out=out, budget=60, initial=300, rounds=2, repeats=2, k=5, lsb_share=0.5,
                     classifier=CLF, scenario="drift", subpop="column:group=g3", relabel_to="world", recent=150,
                     recent_subpop=12, groups=["Stat-AL", "Stat-AL (refit)", "Stat-AL+LSB-LT@0.5"],
                     lookalike_threshold=0.3, print_results=False, show_progress=False)
    assert again["table2"] == results["table2"]
    from broaden.simulate.scenario import print_clusters

    rows = print_clusters(data, "kmeans:scitech:3")
    assert sorted(r["size"] for r in rows) == sorted(np.bincount(data.cluster)[[1, 3, 4]])
    assert any(r["top_terms"][:2] == ["galaxy", "orbit"] or set(r["top_terms"][:2]) == {"galaxy", "orbit"}
               for r in rows)


def test_the_refit_control_is_a_second_reference(drift_run):
    _, _, results = drift_run
    by_ref = results["paired_tests_by_reference"]
    assert set(by_ref) == {"Stat-AL", "Stat-AL (refit)"} and by_ref["Stat-AL"] == results["paired_tests"]
    vs = by_ref["Stat-AL (refit)"]["Stat-AL+LSB-LT@0.5"]["table2"]["s_accuracy"]
    a = results["table2"]["Stat-AL+LSB-LT@0.5"]["s_accuracy"]["values"]
    b = results["table2"]["Stat-AL (refit)"]["s_accuracy"]["values"]
    assert vs["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert vs["n"] == len(a) and "Stat-AL (refit)" not in by_ref["Stat-AL (refit)"]


def test_diversity_and_bald_groups_run_through_select(tmp_path):
    """Issue 17 groups: each spends the budget with its own strategy; coreset's picks lie farther from the
    labelled set (in the latent it covers) than uncertainty sampling's, BADGE/cluster-margin/diverse spread
    over more planted clusters than entropy alone."""
    data = planted(n=1500)
    groups = ["Stat-AL", "BALD", "Coreset", "BADGE", "Cluster-Margin", "Diverse(entropy)", "TypiClust"]
    res = simulate(data, out=tmp_path, budget=60, initial=200, rounds=1, repeats=1, classifier=CLF, groups=groups,
                   print_results=False, show_progress=False)
    assert set(res["groups"]) == set(groups)
    sel = pq.read_table(tmp_path / "repeats/repeat-000/selections.parquet").to_pandas()
    init = pq.read_table(tmp_path / "repeats/repeat-000/initial.parquet").to_pandas()
    expected = {"BALD": {"bald"}, "Coreset": {"coreset"}, "BADGE": {"badge"}, "Cluster-Margin": {"cluster_margin"},
                "Diverse(entropy)": {"diverse(entropy)"}, "TypiClust": {"typiclust"}}
    row = {i: r for r, i in enumerate(data.ids)}
    X = data.features / np.linalg.norm(data.features, axis=1, keepdims=True)
    labeled = X[[row[i] for i in init.id]]
    def min_dist(g):  # mean cosine distance of a group's picks to the nearest labelled item (input space)
        picks = X[[row[i] for i in sel[sel.group == g].id]]
        return float((1 - (picks @ labeled.T).max(axis=1)).mean())
    def clusters(g):
        return len(set(data.cluster[[row[i] for i in sel[sel.group == g].id]]))
    for g, names in expected.items():
        picked = sel[sel.group == g]
        assert len(picked) == 60 and set(picked.strategy) == names, g
    assert min_dist("Coreset") > min_dist("Stat-AL")
    assert max(clusters(g) for g in ("BADGE", "Cluster-Margin", "Diverse(entropy)")) >= clusters("Stat-AL")
