"""The simulation protocol on a tiny generated dataset: budgets, disjointness, recomputed tables, resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from broaden.models.classifier import EmbeddingClassifier
from broaden.simulate import SimData, SimulationError, build_groups, pair_features, simulate
from broaden.simulate import protocol as protocol_mod
from broaden.simulate.cache import cached_encode
from broaden.simulate.oracle import OracleError, noise_confusion, oracle_labels
from broaden.simulate.stats import paired_test, summarize

CLF = {"hidden": (16,), "max_epochs": 15, "patience": 3}
SETTINGS = dict(budget=40, initial=120, rounds=2, repeats=2, k=4, lsb_share=0.25, classifier=CLF,
                variants="frozen,nominal,lt-ranked", print_results=False, show_progress=False)


def tiny_data(seed=0, n=900, C=3, d=8, task="ordinal") -> SimData:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, d)) * 0.9
    y = rng.integers(0, C, n)
    X = centers[y] + rng.normal(size=(n, d))
    ids = np.array([f"item-{i:04d}" for i in rng.permutation(n)])  # string ids, not row order
    return SimData("tiny", ids, y, X, rng.random(n) < 0.2, C, task=task, texts=[f"text {i}" for i in ids])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    data = tiny_data()
    results = simulate(data, out=out, **SETTINGS)
    return out, data, results


def read(out, repeat, name):
    return pq.read_table(out / "repeats" / f"repeat-{repeat:03d}" / f"{name}.parquet").to_pandas()


def test_groups_have_exactly_the_budget_and_never_reselect(run_dir):
    out, data, results = run_dir
    test_ids = set(data.ids[data.is_test])
    assert results["groups"][:6] == ["Random", "Stat-AL", "Stat-AL+LSB", "Stat-AL+LSB-LT", "HW", "QBC"]
    for r in results["repeats_done"]:
        initial = set(read(out, r, "initial")["id"])
        assert len(initial) == SETTINGS["initial"] and not initial & test_ids
        sel = read(out, r, "selections")
        for group in results["groups"]:
            seen = set(initial)
            for rnd in (1, 2):
                ids = sel[(sel.group == group) & (sel["round"] == rnd)]["id"]
                assert len(ids) == SETTINGS["budget"] and ids.is_unique
                assert not set(ids) & seen, f"{group} round {rnd} re-selected a labelled item"
                assert not set(ids) & test_ids
                seen |= set(ids)


def test_lsb_groups_take_their_share_from_broadening(run_dir):
    out, data, results = run_dir
    sel = read(out, 0, "selections")
    lsb = sel[(sel.group == "Stat-AL+LSB") & (sel["round"] == 1)]
    share = int(round(SETTINGS["lsb_share"] * SETTINGS["budget"]))
    n_lsb = (lsb.strategy == "lsb").sum()
    assert 0 < n_lsb <= share
    assert lsb[lsb.strategy == "lsb"].seed_id.notna().all()
    assert set(lsb[lsb.strategy != "lsb"].strategy) <= {"least_confident", "margin", "entropy"}
    lt = sel[(sel.group == "Stat-AL+LSB-LT") & (sel.strategy == "lsb-lt")]
    assert (lt.lookalike_score > 0.5).all()  # τ2 filter
    ranked = sel[(sel.group == "Stat-AL+LSB-LT[lt-ranked]") & (sel["round"] == 1) & (sel.strategy == "lsb-lt")]
    assert len(ranked) == share  # no τ2 filter: the share is filled from every neighbour ...
    scores = ranked.sort_values("rank").lookalike_score.to_numpy()
    assert (np.diff(scores) <= 1e-12).all()  # ... most lookalike first
    info = results["lookalike"]["Stat-AL+LSB-LT[lt-ranked]"]
    assert info["n_candidates"]["values"][0] >= results["lookalike"]["Stat-AL+LSB-LT"]["n_candidates"]["values"][0]


def test_table1_recomputed_from_saved_selections(run_dir):
    out, data, results = run_dir
    C = data.num_classes
    for i, r in enumerate(results["repeats_done"]):
        sel = read(out, r, "selections")
        for group in results["groups"]:
            s = sel[(sel.group == group) & (sel["round"] == 1)]
            p = np.stack(s.probs.to_numpy()).astype(np.float64)
            y = s.label.to_numpy()
            ordinal = np.mean(np.abs(y - p @ np.arange(C)) / (C - 1))
            nominal = np.mean(1 - p[np.arange(len(y)), y])
            t1 = results["table1"][group]
            assert t1["multiclass_loss"]["values"][i] == pytest.approx(ordinal, abs=1e-5)
            assert t1["multiclass_loss_nominal"]["values"][i] == pytest.approx(nominal, abs=1e-5)
            assert t1["yield"]["values"][i] == pytest.approx(np.mean(p.argmax(1) != y))
            conf = np.mean((p.argmax(1) != y) & (p.max(1) > 0.7))
            assert t1["confident_yield"]["values"][i] == pytest.approx(conf)
        vals = results["table1"]["Random"]["multiclass_loss"]["values"]
        assert results["table1"]["Random"]["multiclass_loss"]["mean"] == pytest.approx(np.mean(vals))


def test_round1_probabilities_are_the_snapshot(run_dir):
    """Selections are scored by a model trained on the initial set alone (re-trained independently here)."""
    out, data, results = run_dir
    init = read(out, 0, "initial")
    row = {v: i for i, v in enumerate(data.ids)}
    rows = np.array([row[v] for v in init["id"]])
    snap = EmbeddingClassifier(**{**CLF, "seed": 0 * 1000}).fit(data.features[rows], data.labels[rows],
                                                                   num_classes=data.num_classes)
    sel = read(out, 0, "selections")
    s = sel[(sel.group == "Stat-AL") & (sel["round"] == 1)]
    expected = snap.predict_proba(data.features[[row[v] for v in s.id]])
    np.testing.assert_allclose(np.stack(s.probs.to_numpy()), expected, atol=1e-6)
    # Stat-AL is the top of the uncertainty mix: nothing left in the pool is more least-confident.
    pool = np.setdiff1d(np.flatnonzero(~data.is_test), rows)
    lc = 1 - snap.predict_proba(data.features[pool]).max(1)
    chosen = s[s.strategy == "least_confident"]
    assert (1 - np.stack(chosen.probs.to_numpy()).max(1)).min() >= np.sort(lc)[-len(chosen)] - 1e-6


def test_table2_recomputed_from_saved_test_predictions(run_dir):
    out, data, results = run_dir
    for i, r in enumerate(results["repeats_done"]):
        pred = read(out, r, "test_predictions")
        for group in ["Initial", *results["groups"]]:
            g = pred[pred.group == group]
            p = np.stack(g.probs.to_numpy()).astype(np.float64)
            y = g.label.to_numpy()
            t2 = results["table2"][group]
            assert t2["auc"]["values"][i] == pytest.approx(roc_auc_score(y != 0, 1 - p[:, 0]), abs=1e-6)
            assert t2["accuracy"]["values"][i] == pytest.approx(accuracy_score(y, p.argmax(1)))
            assert t2["macro_f1"]["values"][i] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
        assert set(pred.id) == set(data.ids[data.is_test]) and len(pred) % int(data.is_test.sum()) == 0


def test_result_files_and_paired_tests(run_dir):
    out, data, results = run_dir
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["repeats_done"] == [0, 1] and on_disk["reference_group"] == "Stat-AL"
    for name in ("table1.csv", "table2.csv", "rounds.csv", "config.json"):
        assert (out / name).is_file()
    header = (out / "table2.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["group", "auc_mean", "auc_std"]
    test = results["paired_tests"]["Random"]["table2"]["auc"]
    a = results["table2"]["Random"]["auc"]["values"]
    b = results["table2"]["Stat-AL"]["auc"]["values"]
    assert test["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert test["wins"] + test["losses"] + test["ties"] == 2
    assert len(results["rounds"]["HW"]) == 2
    lt = pq.read_table(out / "repeats" / "repeat-000" / "lookalike.parquet").to_pandas()
    assert set(lt.z) <= {0, 1} and lt.lt_score.between(0, 1).all()
    case = pq.read_table(out / "repeats" / "repeat-000" / "case_study.parquet").to_pandas()
    assert case.seed_text.str.startswith("text item-").all() and "neighbor_probs" in case
    assert "Stat-AL+LSB-LT[frozen]" in results["groups"] and "Stat-AL+LSB-LT[nominal]" in results["groups"]


def test_resume_skips_finished_repeats(tmp_path, monkeypatch):
    data = tiny_data(seed=1, n=500)
    settings = {**SETTINGS, "rounds": 1, "variants": "none", "groups": ["Random", "Stat-AL"]}
    calls = []
    original = protocol_mod.RepeatRun.run

    def counting(self):
        calls.append(self.repeat)
        return original(self)

    monkeypatch.setattr(protocol_mod.RepeatRun, "run", counting)
    first = simulate(data, out=tmp_path, **settings)
    record = tmp_path / "repeats" / "repeat-000.json"
    mtime = record.stat().st_mtime_ns
    again = simulate(data, out=tmp_path, **settings)
    assert calls == [0, 1] and record.stat().st_mtime_ns == mtime
    assert again["table2"] == first["table2"]
    simulate(data, out=tmp_path, **{**settings, "repeats": 3})  # extending reuses 0 and 1
    assert calls == [0, 1, 2]
    os.remove(tmp_path / "repeats" / "repeat-001.json")  # an interrupted repeat is redone alone
    redone = simulate(data, out=tmp_path, **{**settings, "repeats": 3})
    assert calls == [0, 1, 2, 1]
    assert redone["table1"]["Stat-AL"]["yield"]["values"][1] == first["table1"]["Stat-AL"]["yield"]["values"][1]
    with pytest.raises(SimulationError, match="different configuration.*budget"):
        simulate(data, out=tmp_path, **{**settings, "budget": 30})


def test_pool_too_small_for_the_rounds_fails_before_any_work(tmp_path, monkeypatch):
    def no_repeat(self):
        raise AssertionError("a repeat ran")

    monkeypatch.setattr(protocol_mod.RepeatRun, "run", no_repeat)
    with pytest.raises(SimulationError, match="pool_size=60 cannot supply 2 round"):
        simulate(tiny_data(seed=1, n=500), out=tmp_path / "sim", **{**SETTINGS, "pool_size": 60})
    assert not (tmp_path / "sim").exists()


def test_noisy_oracle(tmp_path):
    labels = np.repeat(np.arange(3), 20_000)
    m = noise_confusion(0.3, 3)
    given = oracle_labels(labels, m, seed=5)
    for c in range(3):
        freq = np.bincount(given[labels == c], minlength=3) / 20_000
        np.testing.assert_allclose(freq, m[c], atol=0.015)
    with pytest.raises(OracleError):
        noise_confusion(1.0, 3)
    data = tiny_data(seed=2, n=500)
    res = simulate(data, out=tmp_path, **{**SETTINGS, "rounds": 1, "repeats": 1, "variants": "none",
                                          "label_noise": 0.4, "groups": ["Random", "Stat-AL"]})
    sel = read(tmp_path, 0, "selections")
    s = sel[sel.group == "Random"]
    assert res["table1"]["Random"]["noisy_share"]["values"][0] == pytest.approx(np.mean(s.label != s.oracle_label))
    assert 0.2 < np.mean(s.label != s.oracle_label) < 0.6
    pred = read(tmp_path, 0, "test_predictions")
    row = {v: i for i, v in enumerate(data.ids)}
    assert np.array_equal(pred.label.to_numpy(), data.labels[[row[v] for v in pred.id]])  # test stays gold


def test_group_building():
    names = [g.name for g in build_groups(variants="all", dataset_discrepancy="ordinal", num_classes=2)]
    assert "Stat-AL+LSB-LT[frozen]" in names and "Stat-AL+LSB-LT[tuned]" not in names
    assert not any("nominal" in n or "ordinal" in n for n in names)  # both forms coincide for C = 2
    names4 = [g.name for g in build_groups(variants="nominal,ordinal", dataset_discrepancy="ordinal",
                                           num_classes=4)]
    assert names4[-1] == "Stat-AL+LSB-LT[nominal]" and "Stat-AL+LSB-LT[ordinal]" not in names4
    assert [g.name for g in build_groups(include=["Random"])] == ["Stat-AL", "Random"]


def test_stats_against_numpy_and_scipy():
    from scipy.stats import wilcoxon

    s = summarize([0.1, 0.3, None, 0.2])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(np.std([0.1, 0.3, 0.2], ddof=1))
    a, b = [0.5, 0.6, 0.7, 0.4, 0.9, 0.8], [0.4, 0.5, 0.72, 0.3, 0.7, 0.6]
    t = paired_test(a, b)
    d = np.subtract(a, b)
    assert (t["wins"], t["losses"]) == (5, 1)
    assert t["wilcoxon_p"] == pytest.approx(wilcoxon(d).pvalue)
    assert t["bootstrap_ci"][0] <= d.mean() <= t["bootstrap_ci"][1]
    assert paired_test([1, 1], [1, 1])["wilcoxon_p"] is None


def test_embedding_cache(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    texts = ["a b", "cc", "a b", "aaa"]
    v = cached_encode(texts, encode, encoder_id="e1", tag="t", cache_dir=tmp_path)
    assert calls == [["a b", "aaa", "cc"]]  # duplicates encoded once
    np.testing.assert_array_equal(v, [[3, 1], [2, 0], [3, 1], [3, 3]])
    np.testing.assert_array_equal(cached_encode(texts, encode, encoder_id="e1", tag="t", cache_dir=tmp_path), v)
    assert len(calls) == 1
    cached_encode(texts, encode, encoder_id="e2", tag="t", cache_dir=tmp_path)  # other encoder: re-encode
    assert len(calls) == 2
    npy = next(p for p in tmp_path.glob("t-*.npy") if "e1" in (p.with_suffix(".json")).read_text())
    npy.write_bytes(npy.read_bytes()[:-4] + b"\0\0\0\1")  # damaged file is never trusted
    np.testing.assert_array_equal(cached_encode(texts, encode, encoder_id="e1", tag="t", cache_dir=tmp_path), v)
    assert len(calls) == 3


def test_pair_features():
    u = np.array([[1.0, 0.0], [0.6, 0.8]])
    v = np.array([[0.0, 1.0], [0.6, 0.8]])
    f = pair_features(u, v)
    assert f.shape == (2, 9)
    np.testing.assert_allclose(f[0], [1, 0, 0, 1, 1, 1, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(f[1, -1], 1.0, atol=1e-6)


@pytest.mark.slow
def test_real_pair_dataset_features(data_dir, tmp_path):
    """CrowdFlower through MiniLM: query and title embedded separately, joined by cross features."""
    from broaden.simulate import load_sim_data

    data = load_sim_data("crowdflower", data_dir=data_dir, cache_dir=tmp_path, max_items=200, show_progress=False)
    assert data.features.shape == (len(data.ids), 4 * 384 + 1) and data.task == "ordinal"
    assert data.is_test.any() and " | " in data.texts[0]


def test_cli_demo_prints_tables_and_where_results_are(tmp_path, monkeypatch, capsys):
    from broaden.cli import main
    from broaden.simulate import runner

    monkeypatch.setattr(runner, "load_sim_data", lambda *a, **k: tiny_data(seed=3, n=600))
    monkeypatch.setattr(runner, "DEMO_DEFAULTS", {**runner.DEMO_DEFAULTS, "initial": 100, "budget": 40,
                                                  "classifier": CLF, "k": 4})
    assert main(["demo", "--out", str(tmp_path / "d"), "--no-report", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "Full results:" in printed
    assert json.loads((tmp_path / "d" / "results.json").read_text())["config"]["budget"] == 40


def test_cli_simulate_bad_dataset_is_one_clear_line(tmp_path, capsys):
    from broaden.cli import main

    assert main(["simulate", "--dataset", "no-such-data", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'no-such-data'" in capsys.readouterr().err


@pytest.mark.slow
def test_real_demo_on_clickbait(data_dir, tmp_path):
    """The demo path on the real headlines (smaller than `broaden demo` so the suite stays quick)."""
    from broaden.simulate import demo

    res = demo(tmp_path / "d", data_dir=data_dir, cache_dir=tmp_path / "cache", show_progress=False, report=False,
               max_items=2000, initial=200, budget=200)
    assert res["config"]["dataset"] == "clickbait" and res["table2"]["Stat-AL"]["auc"]["mean"] > 0.8
    assert res["table1"]["Stat-AL"]["multiclass_loss"]["mean"] > res["table1"]["Random"]["multiclass_loss"]["mean"]
