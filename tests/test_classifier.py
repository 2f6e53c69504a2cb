"""EmbeddingClassifier: learns, is deterministic, round-trips through safetensors + JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight

from broaden.models.classifier import ClassifierError, EmbeddingClassifier, balanced_class_weights


def blobs(rng, n=600, d=12, C=3, spread=1.0):
    centers = rng.normal(size=(C, d)) * 2.0
    y = rng.integers(0, C, n)
    return (centers[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


FAST = {"hidden": (32,), "max_epochs": 40}


def test_accuracy_matches_logistic_regression(rng):
    X, y = blobs(rng, n=1500)
    Xtr, ytr, Xte, yte = X[:1000], y[:1000], X[1000:], y[1000:]
    clf = EmbeddingClassifier(**FAST).fit(Xtr, ytr)
    ref = LogisticRegression(max_iter=2000).fit(Xtr, ytr).score(Xte, yte)
    p = clf.predict_proba(Xte)
    assert p.shape == (500, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    assert (p.argmax(axis=1) == yte).mean() >= ref - 0.03


def test_deterministic_for_a_seed_and_different_across_seeds(rng):
    X, y = blobs(rng)
    a = EmbeddingClassifier(**FAST, seed=3).fit(X, y).predict_proba(X)
    b = EmbeddingClassifier(**FAST, seed=3).fit(X, y).predict_proba(X)
    c = EmbeddingClassifier(**FAST, seed=4).fit(X, y).predict_proba(X)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_transform_is_the_hidden_layer(rng):
    X, y = blobs(rng)
    clf = EmbeddingClassifier(**FAST).fit(X, y)
    state = {k: v.numpy().astype(np.float64) for k, v in clf.model_.state_dict().items()}
    Xs = (X.astype(np.float64) - clf.mean_) / clf.scale_
    hidden = np.maximum(Xs @ state["0.weight"].T + state["0.bias"], 0.0)
    np.testing.assert_allclose(clf.transform(X), hidden, rtol=1e-4, atol=1e-4)
    logits = hidden @ state["3.weight"].T + state["3.bias"]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(X), expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_early_stopping_restores_the_best_epoch(rng):
    X, y = blobs(rng, spread=3.0)  # overlapping classes: validation loss turns up
    clf = EmbeddingClassifier(hidden=(64,), max_epochs=200, patience=3, lr=1e-2, seed=0).fit(X, y)
    val = [h["val_loss"] for h in clf.history_]
    assert len(val) < 200 and clf.best_epoch_ == int(np.argmin(val))
    assert len(val) - 1 - clf.best_epoch_ == 3  # stopped after `patience` epochs without improvement


def test_balanced_class_weights_match_scikit_learn(rng):
    y = np.r_[np.zeros(90, int), np.ones(30, int), np.full(10, 2)]
    clf = EmbeddingClassifier(class_weight="balanced")
    w = clf._class_weights(y, 3).numpy()
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(3), y=y), rtol=1e-6)
    # the shared function the VL trainer also uses; a class absent from the labels gets no weight
    np.testing.assert_allclose(balanced_class_weights(y, 3), w, rtol=1e-6)
    assert balanced_class_weights(y, 4)[3] == 0.0


def test_num_classes_covers_classes_missing_from_training(rng):
    X, y = blobs(rng, C=2)
    clf = EmbeddingClassifier(**FAST).fit(X, y, num_classes=4)
    assert clf.predict_proba(X[:5]).shape == (5, 4)


def test_save_load_round_trip(tmp_path, rng):
    X, y = blobs(rng)
    clf = EmbeddingClassifier(**FAST, class_weight="balanced").fit(X, y)
    clf.save(tmp_path / "m")
    again = EmbeddingClassifier.load(tmp_path / "m")
    assert np.array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert np.array_equal(again.transform(X), clf.transform(X))
    assert again.get_params() == clf.get_params()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["classifier.json", "classifier.safetensors"]


def test_calibrate_fits_the_temperature_on_the_held_out_rows(tmp_path, rng):
    from scipy.special import softmax

    from broaden.calibration import TemperatureScaler

    X, y = blobs(rng, n=800, spread=2.5)  # overlapping classes and some label noise: T is far from 1
    y = np.where(rng.random(len(y)) < 0.15, rng.integers(0, 3, len(y)), y)
    plain = EmbeddingClassifier(hidden=(64,), max_epochs=60, patience=60).fit(X, y)
    clf = EmbeddingClassifier(hidden=(64,), max_epochs=60, patience=60, calibrate=True).fit(X, y)
    assert plain.temperature_ == 1.0 and np.array_equal(plain.decision_function(X), clf.decision_function(X))
    # The same temperature TemperatureScaler finds on the held-out rows' logits, applied in predict_proba.
    ref = TemperatureScaler().fit(clf.decision_function(X[clf.val_idx_]), y[clf.val_idx_]).temperature_
    assert clf.temperature_ == pytest.approx(ref) and abs(clf.temperature_ - 1.0) > 0.05
    np.testing.assert_allclose(clf.predict_proba(X), softmax(clf.decision_function(X) / ref, axis=1), atol=1e-6)
    assert np.array_equal(clf.predict(X), plain.predict(X))  # a temperature never changes the argmax
    clf.save(tmp_path / "m")
    again = EmbeddingClassifier.load(tmp_path / "m")
    assert again.temperature_ == clf.temperature_ and np.array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_load_rejects_mismatched_or_missing_files(tmp_path, rng):
    X, y = blobs(rng)
    EmbeddingClassifier(**FAST).fit(X, y).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "classifier.json").read_text())
    cfg["params"]["hidden"] = [8]
    (tmp_path / "m" / "classifier.json").write_text(json.dumps(cfg))
    with pytest.raises(ClassifierError, match="do not match"):
        EmbeddingClassifier.load(tmp_path / "m")
    with pytest.raises(ClassifierError, match="not a saved"):
        EmbeddingClassifier.load(tmp_path / "nothing")


def test_bad_input_is_a_clear_error(rng):
    X, y = blobs(rng)
    with pytest.raises(ClassifierError, match="not fitted"):
        EmbeddingClassifier().predict_proba(X)
    with pytest.raises(ClassifierError, match=r"\(n, d\)"):
        EmbeddingClassifier().fit(X, y[:-1])
    with pytest.raises(ClassifierError, match="non-negative integer"):
        EmbeddingClassifier().fit(X, y - 1)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ClassifierError, match="NaN"):
        EmbeddingClassifier().fit(bad, y)
    clf = EmbeddingClassifier(**FAST).fit(X, y)
    with pytest.raises(ClassifierError, match="shape"):
        clf.predict_proba(X[:, :5])


def test_threads_are_restored(rng):
    X, y = blobs(rng, n=100)
    before = torch.get_num_threads()
    EmbeddingClassifier(**FAST, num_threads=1).fit(X, y)
    assert torch.get_num_threads() == before



def test_old_module_path_is_a_deprecated_alias():
    import importlib
    import sys

    sys.modules.pop("broaden.classifier", None)
    with pytest.warns(DeprecationWarning, match="broaden.models.classifier"):
        old = importlib.import_module("broaden.classifier")
    assert old.EmbeddingClassifier is EmbeddingClassifier
