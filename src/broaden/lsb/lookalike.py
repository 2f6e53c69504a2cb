"""The Lookalike Threshold (paper Eq. 4; DESIGN.md §3 step 3).

A logistic regression on the embedding h separates bad cases (z = 1: d > τ1) from consistent items
(z = 0: ŷ = y) of the labelled set, with balanced class weights because bad cases are rare. Its AUC is
measured on a stratified held-out part of the labelled set, and the model that was measured is the one
used. Only kNN candidates with P(z = 1 | h) > τ2 are kept. The fitted model is just a weight vector and
a bias, saved as JSON (nothing to unpickle).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from scipy.special import expit

from broaden.errors import LookalikeError
from broaden.io import write_text

FORMAT = "broaden.lookalike/1"


class LookalikeModel:
    """P(z = 1 | h) = σ(w·h + b), fitted with scikit-learn's ``LogisticRegression(class_weight="balanced")``.

    ``holdout`` is the stratified share of rows kept out of training to measure ``auc_`` (0 trains on all
    and leaves ``auc_`` NaN). ``C`` is scikit-learn's inverse regularisation strength.
    """

    def __init__(self, *, C: float = 1.0, holdout: float = 0.2, max_iter: int = 1000, seed: int = 0):
        if not 0 <= holdout < 1:
            raise LookalikeError(f"holdout share must be in [0, 1), got {holdout}")
        self.C, self.holdout, self.max_iter, self.seed = C, holdout, max_iter, seed
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        self.auc_: float = math.nan
        self.n_train_ = self.n_holdout_ = 0
        self.holdout_index_ = np.empty(0, dtype=np.int64)

    def fit(self, X: np.ndarray, z: np.ndarray) -> LookalikeModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import train_test_split

        X = np.asarray(X, dtype=np.float64)
        z = np.asarray(z).astype(np.int64)
        counts = np.bincount(z, minlength=2)
        if len(counts) > 2 or counts.min() < 2:
            raise LookalikeError(
                f"the Lookalike Threshold needs at least 2 bad cases (z=1) and 2 consistent items (z=0); "
                f"got {counts[1]} and {counts[0]} — lower the seed threshold or label more items"
            )
        rows = np.arange(len(z))
        test = np.empty(0, dtype=np.int64)
        if self.holdout > 0 and counts.min() * self.holdout >= 1:
            rows, test = train_test_split(rows, test_size=self.holdout, stratify=z, random_state=self.seed)
        lr = LogisticRegression(C=self.C, class_weight="balanced", max_iter=self.max_iter)
        lr.fit(X[rows], z[rows])
        self.coef_, self.intercept_ = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
        self.n_train_, self.n_holdout_ = len(rows), len(test)
        self.holdout_index_ = np.sort(test)
        if len(np.unique(z[test])) == 2:
            self.auc_ = float(roc_auc_score(z[test], self.decision_function(X[test])))
        return self

    def _check(self, X: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise LookalikeError("the Lookalike model is not fitted")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.coef_.size:
            raise LookalikeError(f"embeddings have shape {X.shape}; the Lookalike model expects "
                                 f"{self.coef_.size} dimensions")
        return X

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self._check(X) @ self.coef_ + self.intercept_

    def score(self, X: np.ndarray) -> np.ndarray:
        """P(z = 1 | h) per row."""
        return expit(self.decision_function(X))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.score(X)
        return np.column_stack([1 - p, p])

    # -- persistence
    def to_dict(self) -> dict:
        if self.coef_ is None:
            raise LookalikeError("the Lookalike model is not fitted")
        return {"format": FORMAT, "coef": self.coef_.tolist(), "intercept": self.intercept_,
                "auc": None if math.isnan(self.auc_) else self.auc_, "n_train": self.n_train_,
                "n_holdout": self.n_holdout_,
                "params": {"C": self.C, "holdout": self.holdout, "max_iter": self.max_iter, "seed": self.seed}}

    def save(self, path: str | os.PathLike) -> None:
        write_text(json.dumps(self.to_dict()), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LookalikeModel:
        try:
            data = json.loads(open(path, encoding="utf-8").read())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r} is not {FORMAT!r}")
            model = cls(**data.get("params", {}))
            model.coef_ = np.asarray(data["coef"], dtype=np.float64)
            model.intercept_ = float(data["intercept"])
            if model.coef_.ndim != 1 or not np.isfinite(model.coef_).all() or not math.isfinite(model.intercept_):
                raise ValueError("coefficients must be a finite vector")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LookalikeError(f"{path}: not a Lookalike model file ({exc})") from exc
        model.auc_ = math.nan if data.get("auc") is None else float(data["auc"])
        model.n_train_, model.n_holdout_ = int(data.get("n_train", 0)), int(data.get("n_holdout", 0))
        return model
