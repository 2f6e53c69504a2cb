"""When to stop (issue 17 item 4): stop-set agreement (Bloodgood & Vijay-Shanker 2009) against scikit-learn,
the three-rounds rule against a brute-force definition, Eq. 12 by hand, and the reading in `broaden status`."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import cohen_kappa_score

from broaden import io
from broaden.metrics import max_beta_variance
from broaden.rounds import round_finish, round_import, round_start, status
from broaden.rounds.stopping import (
    consecutive_kappas, falling_yield, round_tallies, stable_predictions, stopping_signals, workspace_signals,
)
from tests.test_rounds import fill_csv, make_world, new_workspace


def test_consecutive_kappas_equal_scikit_learn():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 3, 200)]
    for flip in (0.3, 0.1, 0.01):
        nxt = preds[-1].copy()
        change = rng.random(200) < flip
        nxt[change] = rng.integers(0, 3, int(change.sum()))
        preds.append(nxt)
    kappas = consecutive_kappas([*preds, None, preds[-1]])
    assert kappas[0] is None and kappas[-2] is None and kappas[-1] is None  # nothing to compare with
    for i in range(1, len(preds)):
        assert kappas[i] == pytest.approx(cohen_kappa_score(preds[i - 1], preds[i]))


def _stable_by_definition(kappas, i, threshold=0.99, rounds=3):
    window = kappas[i - rounds + 1:i + 1] if i >= rounds - 1 else []
    return len(window) == rounds and all(k is not None and k >= threshold for k in window)


def test_the_rule_fires_exactly_after_three_consecutive_rounds_at_or_above_the_threshold():
    for pattern in itertools.product([None, 0.95, 0.99, 0.999], repeat=6):
        got = stable_predictions(list(pattern))
        assert got == [_stable_by_definition(pattern, i) for i in range(6)], pattern
    assert stable_predictions([0.99, 0.99, 0.99]) == [False, False, True]  # ≥, not >
    assert stable_predictions([0.999, 0.98, 0.999, 0.999, 0.999]) == [False, False, False, False, True]


def test_the_reading_counts_the_run_the_rule_counts():
    """The printed run of rounds at κ ≥ 0.99 is the one the stability rule counts: a change or an empty
    stop set (no κ) starts it again."""
    p, q = [0, 1, 0, 1], [1, 1, 0, 1]
    signals = stopping_signals([1, 2, 3, 4, 5, 6], [p, p, q, q, [], q], [None] * 6, [(0, 0)] * 6)
    assert not any(s.stable for s in signals)
    assert ["so far" in s.reading for s in signals] == [False, True, True, True, False, False]
    assert [s.reading.split(" so far")[0][-1] for s in signals[1:4]] == ["1", "0", "1"]


def test_falling_yield():
    assert falling_yield([0.5, 0.4, 0.4, 0.2]) == [False, False, True, True]
    assert falling_yield([0.3, 0.3, 0.3]) == [False, False, False]  # flat is not falling
    assert falling_yield([0.5, None, 0.2, 0.1]) == [False, False, False, False]


def test_beta_variance_signal_by_hand():
    # y = [1, 1, 0, 0], s = [0.9, 0.6, 0.4, 0.1]: every reported operating point (s ≥ 0.5, each R@P level,
    # TPR at FPR ≤ 1 %) is TP = 2, FP = 0, FN = 0, so precision and recall are Beta(3, 1):
    # variance 3·1 / (4² · 5) = 0.0375.
    var = max_beta_variance(np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.4, 0.1]))
    assert var == pytest.approx(3 / 80)
    signals = stopping_signals([1, 2, 3], [None] * 3, [var, 0.0049, 0.005], [(0, 0)] * 3)
    assert [s.certain for s in signals] == [False, True, False]  # strictly below 0.005
    assert "max Beta variance 0.0375" in signals[0].reading and "certain" in signals[1].reading


def test_reading_says_consider_stopping_only_when_predictions_are_stable():
    base = np.arange(300) % 3
    changed = base.copy()
    changed[:60] = (changed[:60] + 1) % 3  # round 2's model changed a fifth of the predictions
    # κ vs the previous round: –, low, low, 1, 1, 1: stable from round 6 on.
    signals = stopping_signals([1, 2, 3, 4, 5, 6], [base, changed, base, base, base, base],
                               [0.01, 0.004, 0.004, 0.004, 0.004, 0.003],
                               [(40, 20), (40, 12), (40, 12), (40, 8), (40, 4), (40, 2)])
    assert [s.advice for s in signals] == ["keep labelling"] * 5 + ["consider stopping"]
    assert "first round with stop-set predictions" in signals[0].reading
    assert "κ = " in signals[1].reading and "predictions still change" in signals[1].reading
    assert signals[-1].reading.startswith("consider stopping: predictions are stable")
    assert "the yield is falling (0.20 → 0.10 → 0.05)" in signals[-1].reading
    assert signals[-1].yield_share == pytest.approx(2 / 40)


def test_round_tallies_count_judged_labels():
    items = [{"item_key": "a", "round": 1, "pred": 0}, {"item_key": "b", "round": 1, "pred": 1},
             {"item_key": "c", "round": 1, "pred": None}, {"item_key": "d", "round": 2, "pred": 2},
             {"item_key": "e", "round": 2, "pred": 0}]
    labels = {("a", 1): 0, ("b", 1): 0, ("c", 1): 1, ("d", 2): 2}  # e: pending or tied
    assert round_tallies(items, labels) == {1: (2, 1), 2: (1, 0)}


def test_a_new_stop_set_is_not_compared_with_the_old_one():
    p = [0, 1, 2, 0]
    rows = [{"round": r, "status": "finished",
             "metrics": json.dumps({"stop_set": {"digest": d, "predictions": p}})}
            for r, d in ((1, "x"), (2, "x"), (3, "y"))]
    rows.append({"round": 4, "status": "open", "metrics": None})
    kappas = [s.kappa for s in workspace_signals(rows, {})]
    assert kappas == [None, 1.0, None]


# ----------------------------------------------------------------------------------- a workspace
def _label_round(world, ws, number):
    batch = pq.read_table(ws / f"rounds/{number:04d}/batch.parquet")
    labels = {k: world.oracle[k] for k in map(str, batch.column("id").to_pylist())}
    round_import(ws, fill_csv(ws / f"rounds/{number:04d}/export/batch.csv", world.root / f"r{number}.csv", labels))


def test_status_reports_stop_set_agreement_between_rounds(tmp_path, capsys):
    from broaden.cli import main
    from broaden.models.classifier import EmbeddingClassifier

    world = make_world(tmp_path)
    ws = new_workspace(world)
    for number, pool in ((1, world.pool1), (2, world.pool2)):
        round_start(ws, pool)
        _label_round(world, ws, number)
        round_finish(ws)
    stop = pq.read_table(ws / "stop_set.parquet")
    pool1 = pq.read_table(world.pool1)
    assert stop.num_rows == min(2000, pool1.num_rows)  # drawn once, from round 1's pool
    assert set(stop.column("id").to_pylist()) <= set(map(str, pool1.column("id").to_pylist()))
    # The recorded predictions are what each round's saved classifier predicts on the stop set.
    X = io.list_matrix(stop.column("embedding"))
    preds = []
    for number in (1, 2):
        recorded = json.loads((ws / f"rounds/{number:04d}/metrics.json").read_text())["stop_set"]
        clf = EmbeddingClassifier.load(ws / f"models/round-{number:04d}")
        assert recorded["predictions"] == clf.predict_proba(X).argmax(1).tolist()
        preds.append(recorded["predictions"])
    # The round's eval predictions are kept for the report's curves and reliability diagram.
    ev = pq.read_table(ws / "rounds/0002/eval_predictions.parquet")
    assert ev.num_rows == 150 and set(ev.column_names) == {"id", "label", "probs"}

    report = status(ws)
    first, second = report["stopping"]
    assert (first["round"], first["kappa"], second["round"]) == (1, None, 2)
    assert second["kappa"] == pytest.approx(cohen_kappa_score(preds[0], preds[1]))
    metrics2 = json.loads((ws / "rounds/0002/metrics.json").read_text())["eval"]
    assert second["max_beta_variance"] == pytest.approx(metrics2["max_beta_variance"])
    assert second["advice"] == "keep labelling"  # two rounds can never make three stable comparisons
    for entry, number in ((first, 1), (second, 2)):
        batch = pq.read_table(ws / f"rounds/{number:04d}/batch.parquet")
        wrong = sum(world.oracle[str(i)] != int(np.argmax(p)) for i, p in
                    zip(batch.column("id").to_pylist(), batch.column("probs").to_pylist()))
        assert (entry["labelled"], entry["bad"]) == (batch.num_rows, wrong)

    assert main(["status", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "when to stop: keep labelling: predictions still change" in out
    assert main(["status", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stopping"][1]["kappa"] == pytest.approx(second["kappa"])
