"""Metrics against scikit-learn and hand-computed values of Eq. 11 and Eq. 12."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.metrics import confusion_matrix as sk_confusion

from broaden import metrics as m


def _sk_recall_at_precision(y, s, level):
    precision, recall, _ = precision_recall_curve(y, s)
    # drop scikit-learn's appended (precision=1, recall=0) point, which has no threshold
    precision, recall = precision[:-1], recall[:-1]
    ok = precision >= level
    return float(recall[ok].max()) if ok.any() else 0.0


def _sk_tpr_at_fpr(y, s, level):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[fpr <= level].max())


@pytest.mark.parametrize("seed", range(6))
def test_binary_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 400))
    probs = rng.dirichlet(np.ones(4), n)
    # labels correlated with the probabilities so every curve has shape
    labels = np.array([rng.choice(4, p=0.5 * p + 0.125) for p in probs])
    if seed % 2:  # coarse scores create many ties
        probs = np.round(probs, 1)
        probs /= probs.sum(axis=1, keepdims=True)
    res = m.evaluate(labels, probs)
    y = (labels != 0).astype(int)
    s = 1 - probs[:, 0]
    assert res["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert res["f1"] == pytest.approx(f1_score(y, s >= 0.5), abs=1e-12)
    for key, value in res["recall_at_precision"].items():
        assert value == pytest.approx(_sk_recall_at_precision(y, s, float(key)), abs=1e-12), key
    assert res["tpr_at_fpr"]["0.01"] == pytest.approx(_sk_tpr_at_fpr(y, s, 0.01), abs=1e-12)
    pred = probs.argmax(1)
    assert res["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert res["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro", zero_division=0))
    assert res["confusion_matrix"] == sk_confusion(labels, pred, labels=range(4)).tolist()
    for c in range(4):
        pc = res["per_class"][str(c)]
        assert pc["precision"] == pytest.approx(precision_score(labels, pred, labels=[c], average=None, zero_division=0)[0])
        assert pc["recall"] == pytest.approx(recall_score(labels, pred, labels=[c], average=None, zero_division=0)[0])


def test_positive_option_selects_classes():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 200)
    labels = rng.integers(0, 3, 200)
    res = m.evaluate(labels, probs, positive=[2])
    y = (labels == 2).astype(int)
    assert res["auc"] == pytest.approx(roc_auc_score(y, probs[:, 2]))


def test_discrepancy_hand_values():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])
    labels = np.array([0, 3])
    # E = 0*0.1+1*0.2+2*0.3+3*0.4 = 2.0 ; 0*0.7+1*0.1+2*0.1+3*0.1 = 0.6
    assert m.discrepancy(labels, probs).tolist() == pytest.approx([2.0 / 3, 2.4 / 3])
    assert m.discrepancy(labels, probs, "nominal").tolist() == pytest.approx([0.9, 0.9])
    # Eq. 11 is the mean
    assert m.multiclass_loss(labels, probs) == pytest.approx((2.0 / 3 + 2.4 / 3) / 2)
    # binary: both forms equal |y - p1|
    pb = np.array([[0.8, 0.2], [0.3, 0.7]])
    yb = np.array([1, 1])
    assert m.discrepancy(yb, pb).tolist() == pytest.approx([0.8, 0.3])
    assert m.discrepancy(yb, pb, "nominal").tolist() == pytest.approx([0.8, 0.3])
    with pytest.raises(ValueError, match="unknown discrepancy"):
        m.discrepancy(yb, pb, "cosine")


def test_beta_variance_hand_value():
    # Beta(3, 2): 3*2 / (5^2 * 6) = 0.04
    assert m.beta_variance(3, 2) == pytest.approx(0.04)


def test_max_beta_variance_hand_computed():
    # 4 items: y = 1,1,0,0 ; s = .9,.6,.4,.2
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.6, 0.4, 0.2])
    # F1 point (s>=0.5): TP=2 FP=0 FN=0 -> Beta(3,1) var = 3/(16*5) = 0.0375 for both
    # every R@P level is met with recall 1 at threshold 0.6 (TP=2,FP=0): same point.
    # TPR@FPR 1%: FPR 0 points: threshold .6 -> TP 2: same point.
    assert m.max_beta_variance(y, s) == pytest.approx(3 / 80)
    # worse classifier: s = .9,.3,.6,.2 -> F1 point TP=1 FP=1 FN=1: Beta(2,2) var = 4/(16*5) = 0.05
    s2 = np.array([0.9, 0.3, 0.6, 0.2])
    # R@P40..50: best recall 1.0 at t=.3 (TP2 FP1 FN0): Beta(3,2)=0.04, Beta(3,1)=0.0375
    # R@P60: t=.3 precision .667 ok -> same. R@P70..90: t=.9 (TP1,FP0,FN1): Beta(2,1)=2/(9*4)=0.0556, Beta(2,2)=0.05
    assert m.max_beta_variance(y, s2) == pytest.approx(2 / 36)


def test_edge_cases():
    probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
    one_class = m.evaluate(np.array([1, 1, 1]), probs)
    assert math.isnan(one_class["auc"])
    assert one_class["tpr_at_fpr"]["0.01"] == pytest.approx(1.0)  # no negatives: FPR is 0 everywhere
    # no operating point reaches precision 0.9: recall 0
    y = np.array([1, 0, 0, 0, 1])
    s = np.array([0.5, 0.9, 0.8, 0.7, 0.1])
    r = m.recall_at_precision(y, s)
    assert r["0.9"] == 0.0 and r["0.4"] == pytest.approx(_sk_recall_at_precision(y, s, 0.4))
    # all scores tied: a single operating point
    tied = m.evaluate(np.array([0, 1, 0, 1]), np.full((4, 2), 0.5))
    assert tied["auc"] == pytest.approx(0.5)
    assert tied["recall_at_precision"]["0.5"] == pytest.approx(1.0)
    assert tied["recall_at_precision"]["0.6"] == 0.0
    empty = m.evaluate(np.array([], int), np.zeros((0, 2)))
    assert empty["n"] == 0 and math.isnan(empty["auc"])
    assert m.to_jsonable({"a": float("nan"), "b": [float("inf"), 1.0]}) == {"a": None, "b": [None, 1.0]}


def test_mean_std_ignores_undefined_values():
    mean, std = m.mean_std([1.0, None, 3.0, float("nan"), 2.0])
    assert mean == pytest.approx(2.0) and std == pytest.approx(np.std([1, 3, 2], ddof=1))
    assert m.mean_std([5.0]) == (5.0, None)
    assert math.isnan(m.mean_std([None, float("nan")])[0])
