"""What each strategy's items were worth to the model (issue 20): equal-size leave-n-out.

Refit the model on everything labelled, and again without ``n`` of one strategy's items of the latest
round — the same ``n`` for every strategy (the smallest arm's size), so a small arm is not flattered by
diminishing returns — and measure how much worse the evaluation set gets without them, per item removed:

    value_s = mean_draws [ mean_eval ( loss_i(without n of s) − loss_i(all) ) ] / n

with ``loss_i`` the log-loss of evaluation item i (``metric="log_loss"``) or its 0/1 error
(``metric="accuracy"``); ``draws`` random subsets of s per estimate. Its standard error combines the
evaluation sample (the per-item differences are paired) and the draws:

    se_s² = mean_draws var_i(Δ_i) / (n_eval · n²) + var_draws(value) / draws

Positive = the items taught the model something; ≈ 0 for items it already knew (duplicates of labelled
items). ``fit`` should be the model family that is actually retrained (a linear probe, the default here,
can disagree with it: on clickbait i.i.d. it gave uncertainty sampling's boundary items negative value,
BENCHMARKS.md). Error yield is not used: it correlated with the accuracy gained at r ≈ 0.15 (issue 20).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

METRICS = ("log_loss", "accuracy")
Fit = Callable[[np.ndarray, np.ndarray], object]  # (X, y) -> a fitted model with predict_proba


def linear_probe(*, C: float = 1.0, seed: int = 0) -> Fit:
    """Multinomial logistic regression on standardised embeddings: cheap, the same for every model size."""
    def fit(X: np.ndarray, y: np.ndarray):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed)).fit(X, y)
    return fit


def _probs(model, X: np.ndarray, num_classes: int) -> np.ndarray:
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    classes = getattr(model, "classes_", None)
    if classes is not None and p.shape[1] != num_classes:  # sklearn drops classes absent from the fit
        full = np.zeros((len(X), num_classes))
        full[:, np.asarray(classes, dtype=np.int64)] = p
        p = full
    p = np.clip(p, 1e-7, 1.0)
    return p / p.sum(axis=1, keepdims=True)


def _per_item(p: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    return {"log_loss": -np.log(p[np.arange(len(y)), y]), "accuracy": (p.argmax(axis=1) != y).astype(np.float64)}


def _macro_f1(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, p.argmax(axis=1), average="macro", labels=np.unique(y)))


def strategy_values(X: np.ndarray, y: np.ndarray, strategies: Sequence, X_eval: np.ndarray, y_eval: np.ndarray,
                    *, fit: Fit | None = None, full_model=None, num_classes: int | None = None,
                    metric: str = "log_loss", draws: int = 3, n_remove: int | None = None,
                    seed: int = 0) -> dict[str, dict]:
    """Equal-size leave-n-out value of each strategy's items (module docstring).

    ``strategies`` gives, per training row, the strategy that selected it in the latest round, or None for
    items labelled earlier (always kept). ``fit`` refits the model family (default: :func:`linear_probe`);
    ``full_model``, when given, is the model already fitted on every row. Returns ``{strategy: {"value",
    "se", "loss_value", "accuracy_value", "f1_value", "n", "n_removed"}}``; ``value``/``se`` are in the
    units of ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1; got {draws}")
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(np.int64)
    y_eval = np.asarray(y_eval).astype(np.int64)
    strategies = np.asarray([("" if s is None else str(s)) for s in strategies], dtype=object)
    if len(strategies) != len(y) or len(X) != len(y):
        raise ValueError(f"X, y and strategies must have one row each; got {len(X)}, {len(y)}, {len(strategies)}")
    fit = fit or linear_probe(seed=seed)
    C_ = int(num_classes or max(int(y.max()), int(y_eval.max())) + 1)
    members = {name: np.flatnonzero(strategies == name) for name in sorted({s for s in strategies if s})}
    if not members:
        return {}
    n = int(n_remove or min(len(m) for m in members.values()))
    if n < 1:
        raise ValueError(f"n_remove must be ≥ 1; got {n_remove}")
    p_full = _probs(full_model if full_model is not None else fit(X, y), X_eval, C_)
    full, f1_full = _per_item(p_full, y_eval), _macro_f1(p_full, y_eval)
    rng = np.random.default_rng(seed)
    out = {}
    for name, rows in members.items():
        k = min(n, len(rows))
        per_draw: dict[str, list] = {"log_loss": [], "accuracy": [], "f1": [], "var": []}
        for _ in range(draws):
            keep = np.ones(len(y), bool)
            keep[rng.choice(rows, k, replace=False)] = False
            if len(np.unique(y[keep])) < 2:
                break  # nothing left to fit a classifier on: the value is not measurable
            p = _probs(fit(X[keep], y[keep]), X_eval, C_)
            without = _per_item(p, y_eval)
            for m in METRICS:
                per_draw[m].append(float((without[m] - full[m]).mean()) / k)
            per_draw["var"].append(float((without[metric] - full[metric]).var()) / (len(y_eval) * k * k))
            per_draw["f1"].append((f1_full - _macro_f1(p, y_eval)) / k)
        if not per_draw["f1"]:
            continue
        chosen = np.asarray(per_draw[metric])
        d = len(chosen)
        se = np.sqrt(np.mean(per_draw["var"]) + (chosen.var(ddof=1) / d if d > 1 else 0.0))
        out[name] = {"value": float(chosen.mean()), "se": float(se), "metric": metric,
                     "loss_value": float(np.mean(per_draw["log_loss"])),
                     "accuracy_value": float(np.mean(per_draw["accuracy"])),
                     "f1_value": float(np.mean(per_draw["f1"])), "n": int(len(rows)), "n_removed": int(k)}
    return out
