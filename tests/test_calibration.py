"""Calibration (issue 17 item 3): ECE and Brier against direct computations and scikit-learn, temperature
scaling (Guo et al. 2017) recovering a planted temperature, and Cohen's kappa against scikit-learn."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, cohen_kappa_score, log_loss

from broaden.calibration import (
    CALIBRATION_FILE, TemperatureScaler, fit_calibration, model_temperature, read_calibration,
)
from broaden.errors import ConfigError
from broaden.metrics import brier_score, cohen_kappa, evaluate, expected_calibration_error, reliability_bins


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ece_by_loop(labels, probs, n_bins):
    """ECE written out bin by bin, item by item: B_m = items with (m-1)/M < max p <= m/M."""
    n = len(labels)
    total = 0.0
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        members = [i for i in range(n) if lo < probs[i].max() <= hi]
        if not members:
            continue
        acc = sum(int(np.argmax(probs[i]) == labels[i]) for i in members) / len(members)
        conf = sum(probs[i].max() for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_ece_matches_a_direct_per_bin_computation(n_bins):
    rng = np.random.default_rng(n_bins)
    probs = rng.dirichlet(np.full(4, 0.6), 500)
    labels = np.where(rng.random(500) < 0.6, probs.argmax(1), rng.integers(0, 4, 500))
    assert expected_calibration_error(labels, probs, n_bins=n_bins) == pytest.approx(
        _ece_by_loop(labels, probs, n_bins), abs=1e-12)


def test_ece_hand_example():
    # 5 bins. Confidences 0.9, 0.9 (one right): |0.5 - 0.9| * 2/4; 0.7, 0.7 (both right): |1 - 0.7| * 2/4.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.7, 0.3], [0.3, 0.7]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(labels, probs, n_bins=5) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)
    bins = reliability_bins(labels, probs, n_bins=5)
    assert bins.count.tolist() == [0, 0, 0, 2, 2]
    np.testing.assert_allclose(bins.accuracy[3:], [1.0, 0.5])
    np.testing.assert_allclose(bins.confidence[3:], [0.7, 0.9])
    # A confidence on an edge belongs to the bin it closes: (0, 0.5] holds 0.5.
    assert reliability_bins(np.array([0]), np.array([[0.5, 0.5]]), n_bins=2).count.tolist() == [1, 0]
    # Perfectly calibrated: each bin's accuracy equals its confidence.
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), probs) == pytest.approx(0.0)


def test_ece_rejects_bad_bins_and_is_nan_on_nothing():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([0]), np.array([[0.6, 0.4]]), n_bins=0)
    assert np.isnan(expected_calibration_error(np.zeros(0, int), np.zeros((0, 3))))


def test_brier_equals_scikit_learn():
    rng = np.random.default_rng(1)
    p2 = rng.dirichlet(np.ones(2), 300)
    y2 = rng.integers(0, 2, 300)
    # Binary: the positive-class form mean (p_1 - y)^2, as brier_score_loss on P(class 1).
    assert brier_score(y2, p2) == pytest.approx(brier_score_loss(y2, p2[:, 1]))
    assert brier_score(y2, p2) == pytest.approx(np.mean((p2[:, 1] - y2) ** 2))
    p4 = rng.dirichlet(np.ones(4), 300)
    y4 = rng.integers(0, 4, 300)
    assert brier_score(y4, p4) == pytest.approx(brier_score_loss(y4, p4, labels=[0, 1, 2, 3]))
    assert brier_score(y2, p2, scale_by_half=False) == pytest.approx(2 * brier_score_loss(y2, p2[:, 1]))


def test_evaluate_reports_ece_and_brier():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), 200)
    labels = rng.integers(0, 3, 200)
    ev = evaluate(labels, probs)
    assert ev["ece"] == pytest.approx(_ece_by_loop(labels, probs, 15))
    assert ev["brier"] == pytest.approx(brier_score_loss(labels, probs, labels=[0, 1, 2]))
    empty = evaluate(np.zeros(0, int), np.zeros((0, 3)))
    assert np.isnan(empty["ece"]) and np.isnan(empty["brier"])


def test_cohen_kappa_equals_scikit_learn():
    rng = np.random.default_rng(3)
    for c in (2, 3, 5):
        a = rng.integers(0, c, 400)
        b = np.where(rng.random(400) < 0.7, a, rng.integers(0, c, 400))
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    a = np.array([0, 0, 1, 2, 2, 2])
    assert cohen_kappa(a, a) == 1.0
    assert cohen_kappa(np.zeros(5, int), np.zeros(5, int)) == 1.0  # scikit-learn: NaN (0/0)
    assert cohen_kappa(np.array([0, 1]), np.array([1, 0])) == pytest.approx(cohen_kappa_score([0, 1], [1, 0]))


# ---------------------------------------------------------------------------- temperature scaling
def _planted(t0, n=40_000, c=4, seed=0):
    """Logits z; labels drawn from softmax(z / t0): the calibrated model is softmax(z / t0)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, (n, c))
    p = _softmax(z / t0)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(labels, c - 1)


@pytest.mark.parametrize("t0", [0.5, 2.5])
def test_temperature_scaling_recovers_a_planted_temperature(t0):
    z, y = _planted(t0)
    fitted = TemperatureScaler(logits=False).fit(_softmax(z), y)  # from probabilities, as train sees them
    assert fitted.temperature_ == pytest.approx(t0, rel=0.05)
    assert TemperatureScaler().fit(z, y).temperature_ == pytest.approx(fitted.temperature_, rel=1e-5)
    # It lowers NLL (scikit-learn's log_loss as the reference) and is the minimum over a grid of T.
    before = log_loss(y, _softmax(z), labels=range(4))
    after = log_loss(y, fitted.transform(_softmax(z)), labels=range(4))
    assert after < before and fitted.nll_after_ == pytest.approx(after) and fitted.nll_before_ == pytest.approx(before)
    grid = fitted.temperature_ * np.array([0.9, 0.97, 1.03, 1.1])
    assert all(log_loss(y, _softmax(z / t), labels=range(4)) > after for t in grid)
    # Argmax (accuracy) never changes; ECE falls.
    np.testing.assert_array_equal(fitted.transform(_softmax(z)).argmax(1), z.argmax(1))
    assert expected_calibration_error(y, fitted.transform(_softmax(z))) < expected_calibration_error(y, _softmax(z))


def test_temperature_scaler_checks_inputs():
    with pytest.raises(ValueError, match="not fitted"):
        TemperatureScaler().transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="labels must be class indices"):
        TemperatureScaler().fit(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="non-negative"):
        TemperatureScaler(logits=False).fit(np.array([[-0.1, 1.1]]), np.array([0]))
    with pytest.raises(ValueError, match="bounds"):
        TemperatureScaler(bounds=(2.0, 3.0))


def test_calibration_file_round_trip(tmp_path):
    z, y = _planted(1.7, n=2000)
    summary = fit_calibration(tmp_path, z, y)
    record = read_calibration(tmp_path)
    assert record["temperature"] == summary["temperature"] == model_temperature(tmp_path)
    assert summary["temperature"] == pytest.approx(TemperatureScaler().fit(z, y).temperature_)
    assert summary["ece_after"] < summary["ece_before"] and summary["n"] == 2000
    # Too few held-out rows: no temperature, and an earlier file is removed rather than left stale.
    assert fit_calibration(tmp_path, z[:5], y[:5]) is None and model_temperature(tmp_path) is None
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"format": "broaden-calibration/1", "temperature": -1}))
    with pytest.raises(ConfigError, match="calibration.json"):
        read_calibration(tmp_path)
