"""Do the model's errors cluster? A diagnostic from labelled data alone (issue 20, DESIGN §3a).

For each bad case (d > τ1) of the latest labelled partition, the share of its k nearest labelled
neighbours (cosine, itself excluded) that are bad cases too, against the base rate of bad cases among the
labelled items: the *lift* (≈ 1 when errors are placed at random, > 1 when they cluster). Next to it,
how confident the model was on its bad cases (max p, and the share above 0.7 — confidently wrong items
are out of uncertainty sampling's reach) and the Lookalike model's held-out AUC.

Reading, set from the drift / blind-spot / i.i.d. scenarios of BENCHMARKS.md (72 paired repeats: the lift
correlated with LSB-LT's accuracy gain over the refit control at Spearman ρ 0.49): lift ≥ 1.4 with at
least a quarter of bad cases confidently wrong → "errors cluster: broadening is likely to pay"; lift < 1.2
or no confident errors → "errors are isolated: prefer uncertainty sampling"; otherwise mixed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from broaden.io import DEFAULT_COLUMNS, Columns
from broaden.lsb.lookalike import LookalikeError, LookalikeModel
from broaden.lsb.seeds import load_labeled

CONFIDENT = 0.7
CLUSTER_LIFT, ISOLATED_LIFT, CONFIDENT_SHARE = 1.4, 1.2, 0.25
MIN_BAD = 5


@dataclass
class Diagnosis:
    """What :func:`diagnose` measured; ``verdict`` is cluster | isolated | mixed | too-few."""

    n_labeled: int
    n_recent: int
    n_bad: int                  # bad cases in the recent partition
    base_rate: float | None     # share of bad cases among all labelled items
    neighbour_bad_rate: float | None
    lift: float | None
    mean_confidence: float | None   # mean max p over the recent bad cases
    confident_share: float | None   # share of them with max p > 0.7
    lt_auc: float | None
    k: int
    verdict: str
    reading: str

    def to_dict(self) -> dict:
        return asdict(self)


def diagnose(labeled, *, recent=None, k: int = 10, seed_threshold: float = 0.5, discrepancy: str = "ordinal",
             columns: Columns = DEFAULT_COLUMNS, seed: int = 0) -> Diagnosis:
    """Error-clustering diagnostic of a labelled scored table (module docstring).

    ``recent``: ids of the latest labelled partition (default: every labelled item). Its probabilities
    must be out-of-sample — scored by the model before it trained on them, as ``broaden score`` does for
    new labelled data.
    """
    import faiss

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    view = load_labeled(labeled, discrepancy=discrepancy, columns=columns, require_embedding=True)
    n = len(view.labels)
    bad = view.d > seed_threshold
    in_recent = np.ones(n, dtype=bool)
    if recent is not None:
        from broaden.io.ids import IdSet

        in_recent = IdSet(recent).contains(view.keys)
    queries = np.flatnonzero(in_recent & bad)
    conf = view.probs.max(axis=1)
    out = dict(n_labeled=n, n_recent=int(in_recent.sum()), n_bad=int(len(queries)), k=int(k),
               base_rate=float(bad.mean()) if n else None, neighbour_bad_rate=None, lift=None,
               mean_confidence=float(conf[queries].mean()) if len(queries) else None,
               confident_share=float((conf[queries] > CONFIDENT).mean()) if len(queries) else None, lt_auc=None)
    if len(queries) < MIN_BAD or n < k + 2:
        return Diagnosis(**out, verdict="too-few",
                         reading=f"only {len(queries)} bad case(s) in the recent partition: too few to tell whether "
                         "errors cluster; start with uncertainty sampling and a small LSB share")
    raw = view.embeddings(columns)
    emb = raw.astype(np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    kk = min(k + 1, n)
    _, idx = faiss.knn(np.ascontiguousarray(emb[queries]), np.ascontiguousarray(emb), kk,
                       metric=faiss.METRIC_INNER_PRODUCT)
    # Drop each query itself (its own best match; a duplicate may take its place, which is fine).
    own = idx == queries[:, None]
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(kk) < kk - 1)
    neighbours = idx[keep].reshape(len(queries), kk - 1)
    # The base rate a query's neighbours would show at random: bad cases among the *other* labelled items.
    base = (bad.sum() - 1) / (n - 1)
    rate = float(bad[neighbours].mean())
    out.update(neighbour_bad_rate=rate, lift=float(rate / base) if base > 0 else None)
    try:
        rows, z = view.lookalike_targets(seed_threshold)
        model = LookalikeModel(seed=seed).fit(raw[rows], z)
        out["lt_auc"] = None if np.isnan(model.auc_) else float(model.auc_)
    except LookalikeError:
        pass
    verdict, reading = _read(out["lift"], out["confident_share"])
    return Diagnosis(**out, verdict=verdict, reading=reading)


def _read(lift: float | None, confident: float | None) -> tuple[str, str]:
    lift = lift or 0.0
    confident = confident or 0.0
    facts = f"lift {lift:.2f}, {confident:.0%} of bad cases confidently wrong"
    if lift >= CLUSTER_LIFT and confident >= CONFIDENT_SHARE:
        return "cluster", f"errors cluster ({facts}): broadening is likely to pay"
    if lift < ISOLATED_LIFT or confident == 0:
        return "isolated", f"errors are isolated ({facts}): prefer uncertainty sampling"
    return "mixed", f"errors cluster somewhat ({facts}): a small broadening share, then follow the measured values"
