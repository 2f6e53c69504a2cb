"""Evaluation metrics of the paper (§4.3) and DESIGN.md §4.

Binary view: positive = label in the positive classes (default: label ≠ 0), score s = P(positive) =
1 − Σ_{c negative} p_c (for the default view, 1 − p_0). Operating points are the distinct score thresholds t
with "predict positive iff s ≥ t", exactly the points of scikit-learn's ``precision_recall_curve`` /
``roc_curve``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from broaden._lazy import renamed

PRECISION_LEVELS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
FPR_LEVELS: tuple[float, ...] = (0.01,)


# ------------------------------------------------------------------------------ per-sample errors
def expected_class(probs: np.ndarray) -> np.ndarray:
    """E[x] = Σ_c c·p_c(x) (DESIGN §2)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def discrepancy(labels: np.ndarray, probs: np.ndarray, kind: str = "ordinal") -> np.ndarray:
    """Per-item discrepancy d(x) between the human label and the prediction, in [0, 1].

    ``ordinal`` (paper Eq. 11 form): d = |y − E[x]| / (C − 1), right for graded labels;
    ``nominal``: d = 1 − p_y(x), for unordered classes. For C = 2 both equal |y − p_1|.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (n, C) with n = {labels.shape[0]}, got {probs.shape}")
    n_classes = probs.shape[1]
    if n_classes < 2:
        raise ValueError("discrepancy needs at least 2 classes")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    if kind == "ordinal":
        return np.abs(labels - expected_class(probs)) / (n_classes - 1)
    if kind == "nominal":
        return 1.0 - probs[np.arange(labels.size), labels]
    raise ValueError(f"unknown discrepancy kind {kind!r}; expected 'ordinal' or 'nominal'")


def multiclass_loss(labels: np.ndarray, probs: np.ndarray, kind: str = "ordinal") -> float:
    """Eq. 11: mean discrepancy of a set; higher means the set is more valuable to label."""
    d = discrepancy(labels, probs, kind)
    return float(d.mean()) if d.size else float("nan")


# --------------------------------------------------------------------------------- binary view
def binary_view(
    labels: np.ndarray, probs: np.ndarray, positive: Iterable[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(y, s): y = 1 for positive labels, s = 1 − total probability of the negative classes.

    ``positive=None`` means every class but 0 (the paper's "label ≠ 0", s = 1 − p_0).
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    pos = list(range(1, n_classes)) if positive is None else sorted({int(c) for c in positive})
    if not pos or any(c < 0 or c >= n_classes for c in pos):
        raise ValueError(f"positive classes {pos} must be a non-empty subset of 0..{n_classes - 1}")
    if len(pos) == n_classes:
        raise ValueError("positive classes cover every class; nothing would be negative")
    mask = np.zeros(n_classes, dtype=bool)
    mask[pos] = True
    return mask[labels].astype(np.int64), 1.0 - probs[:, ~mask].sum(axis=1)


@dataclass(frozen=True)
class OperatingPoints:
    """Confusion counts at every distinct threshold, highest threshold first (s ≥ t predicts positive)."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def fn(self) -> np.ndarray:
        return self.n_pos - self.tp

    @property
    def precision(self) -> np.ndarray:
        return self.tp / np.maximum(self.tp + self.fp, 1)

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.n_pos if self.n_pos else np.zeros_like(self.tp, dtype=np.float64)

    @property
    def fpr(self) -> np.ndarray:
        return self.fp / self.n_neg if self.n_neg else np.zeros_like(self.fp, dtype=np.float64)


def operating_points(y: np.ndarray, s: np.ndarray) -> OperatingPoints:
    """Cumulative TP/FP over thresholds in one sort (O(n log n), no per-threshold loop)."""
    y = np.asarray(y).astype(np.int64)
    s = np.asarray(s, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores is where a threshold at that score stops.
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1] if s.size else np.array([], int)
    tp = np.cumsum(y_sorted)[last] if s.size else np.array([], np.int64)
    fp = (last + 1) - tp
    n_pos = int(y.sum())
    return OperatingPoints(s_sorted[last], tp, fp, n_pos, int(y.size - n_pos))


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal, ties handled as scikit-learn does); NaN for one class."""
    pts = operating_points(y, s)
    if pts.n_pos == 0 or pts.n_neg == 0:
        return float("nan")
    tpr = np.r_[0.0, pts.tp / pts.n_pos]
    fpr = np.r_[0.0, pts.fp / pts.n_neg]
    return float(np.trapezoid(tpr, fpr))


def _best_index(values: np.ndarray, feasible: np.ndarray) -> int | None:
    """Index of the largest value among feasible points; ties go to the highest threshold (fewest FP)."""
    if not feasible.any():
        return None
    candidates = np.where(feasible, values, -np.inf)
    return int(np.argmax(candidates))


def precision_points(pts: OperatingPoints, levels: Sequence[float] = PRECISION_LEVELS) -> dict[str, int | None]:
    """The operating point behind each R@Pxx: largest recall with precision ≥ xx (None if no point qualifies)."""
    return {_key(lv): _best_index(pts.recall, pts.precision >= lv - 1e-12) for lv in levels}


def fpr_points(pts: OperatingPoints, levels: Sequence[float] = FPR_LEVELS) -> dict[str, int | None]:
    """The operating point behind each TPR@FPR: largest TPR with FPR ≤ level (None if no point qualifies)."""
    return {_key(lv): _best_index(pts.recall, pts.fpr <= lv + 1e-12) for lv in levels}


def _recalls(pts: OperatingPoints, chosen: dict[str, int | None]) -> dict[str, float]:
    return {k: float(pts.recall[i]) if i is not None and pts.n_pos else 0.0 for k, i in chosen.items()}


def recall_at_precision(
    y: np.ndarray, s: np.ndarray, levels: Sequence[float] = PRECISION_LEVELS, *, _pts=None
) -> dict[str, float]:
    """R@Pxx: the largest recall among operating points with precision ≥ xx (0 if none)."""
    pts = _pts or operating_points(y, s)
    return _recalls(pts, precision_points(pts, levels))


def tpr_at_fpr(
    y: np.ndarray, s: np.ndarray, levels: Sequence[float] = FPR_LEVELS, *, _pts=None
) -> dict[str, float]:
    """TPR@FPR: the largest TPR among operating points with FPR ≤ level (0 if none)."""
    pts = _pts or operating_points(y, s)
    return _recalls(pts, fpr_points(pts, levels))


def beta_variance(alpha: np.ndarray | float, beta: np.ndarray | float) -> np.ndarray | float:
    """Variance of Beta(α, β): αβ / ((α+β)² (α+β+1))."""
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    return a * b / ((a + b) ** 2 * (a + b + 1.0))


def max_beta_variance(
    y: np.ndarray,
    s: np.ndarray,
    *,
    precision_levels: Sequence[float] = PRECISION_LEVELS,
    fpr_levels: Sequence[float] = FPR_LEVELS,
    threshold: float = 0.5,
    _pts=None,
) -> float:
    """Eq. 12: the largest posterior variance of precision and recall over the reported operating points.

    At each point, precision ~ Beta(TP+1, FP+1) and recall ~ Beta(TP+1, FN+1). The reported points are the
    F1 threshold (s ≥ ``threshold``) and the points chosen by each R@P and TPR@FPR level that exist.
    Below 0.005 the estimates are considered certain.
    """
    y = np.asarray(y).astype(np.int64)
    s = np.asarray(s, dtype=np.float64)
    pts = _pts or operating_points(y, s)
    counts = []
    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    counts.append((tp, int(pred.sum()) - tp, pts.n_pos - tp))
    chosen = [*precision_points(pts, precision_levels).values(), *fpr_points(pts, fpr_levels).values()]
    for i in chosen:
        if i is not None:
            counts.append((int(pts.tp[i]), int(pts.fp[i]), int(pts.n_pos - pts.tp[i])))
    tp_, fp_, fn_ = (np.array(c, dtype=np.float64) for c in zip(*counts))
    var = np.maximum(beta_variance(tp_ + 1, fp_ + 1), beta_variance(tp_ + 1, fn_ + 1))
    return float(var.max())


def f1_at(y: np.ndarray, s: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of the binary view at s ≥ threshold (0 when there are no true or predicted positives)."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(s) >= threshold
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0


# ---------------------------------------------------------------------------- multi-class view
def confusion_matrix(labels: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    idx = np.asarray(labels, dtype=np.int64) * n_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def multiclass_view(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (argmax rule)."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    cm = confusion_matrix(labels, probs.argmax(axis=1), n_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support + predicted) > 0  # scikit-learn's macro average skips classes absent from both
    return {
        "accuracy": float(tp.sum() / max(labels.size, 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            str(c): {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                     "support": int(support[c])}
            for c in range(n_classes)
        },
        "confusion_matrix": cm.tolist(),
    }


# ---------------------------------------------------------------------------------- calibration
ECE_BINS = 15  # Guo et al. (2017) report ECE with 15 equal-width bins


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label reliability per equal-width confidence bin (lo, hi] (Guo et al. 2017, §2).

    The confidence of an item is its largest probability; it is *correct* when that class is its label.
    Empty bins hold NaN confidence and accuracy.
    """

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Σ_m (|B_m| / n) · |acc(B_m) − conf(B_m)| over the non-empty bins; NaN for no items."""
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        used = self.count > 0
        gap = np.abs(self.accuracy[used] - self.confidence[used])
        return float((self.count[used] / n * gap).sum())


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Items grouped by top-label confidence into ``n_bins`` bins ((m−1)/M, m/M]: count, mean confidence and
    accuracy of each (what a reliability diagram draws and ECE sums)."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (n, C) with n = {labels.shape[0]}, got {probs.shape}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    confidence = probs.max(axis=1) if labels.size else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64) if labels.size else np.zeros(0)
    # side="left" puts a confidence equal to an inner edge into the lower bin: bins are (lo, hi].
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(which, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(edges, count, conf, acc)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error with equal-width bins (Guo et al. 2017, Eq. 3):
    ECE = Σ_m (|B_m| / n) · |acc(B_m) − conf(B_m)|, B_m the items whose largest probability lies in
    ((m−1)/M, m/M]. 0 is perfectly calibrated; NaN for no items."""
    return reliability_bins(labels, probs, n_bins).ece


def brier_score(labels: np.ndarray, probs: np.ndarray, *, scale_by_half: bool | str = "auto") -> float:
    """Brier score: the mean over items of Σ_c (p_c − 1[y = c])², in [0, 2].

    As scikit-learn's ``brier_score_loss``: ``scale_by_half="auto"`` halves it for two classes, where it
    equals the binary form mean (p_1 − y)² in [0, 1]; ``True``/``False`` force either. NaN for no items.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (n, C) with n = {labels.shape[0]}, got {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    if scale_by_half not in ("auto", True, False):
        raise ValueError(f"scale_by_half must be 'auto', True or False, got {scale_by_half!r}")
    if labels.size == 0:
        return float("nan")
    sq = probs.copy()
    sq[np.arange(labels.size), labels] -= 1.0
    value = float((sq ** 2).sum(axis=1).mean())
    half = probs.shape[1] == 2 if scale_by_half == "auto" else bool(scale_by_half)
    return value / 2 if half else value


# -------------------------------------------------------------------------------------- agreement
def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa between two label vectors: κ = (p_o − p_e) / (1 − p_e), p_o the observed agreement and
    p_e the agreement expected from each vector's class shares.

    Two identical constant vectors (p_e = 1) agree perfectly and give 1 (scikit-learn's
    ``cohen_kappa_score`` returns NaN there); NaN for empty vectors.
    """
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-d and of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return float("nan")
    if min(a.min(), b.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    n_classes = int(max(a.max(), b.max())) + 1
    observed = float((a == b).mean())
    expected = float(np.bincount(a, minlength=n_classes) @ np.bincount(b, minlength=n_classes)) / a.size ** 2
    if expected >= 1.0:
        return 1.0
    return (observed - expected) / (1.0 - expected)


# ------------------------------------------------------------------------------------- summary
@renamed(discrepancy_kind="discrepancy")
def evaluate(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    positive: Iterable[int] | None = None,
    discrepancy: str = "ordinal",
) -> dict:
    """All DESIGN §4 metrics for labelled items: the binary view, Eq. 11, Eq. 12 and the multi-class view.

    Keys: n, auc, f1, recall_at_precision ("0.4" … "0.9"), tpr_at_fpr ("0.01"), multiclass_loss,
    max_beta_variance, accuracy, macro_f1, per_class, confusion_matrix, ece (top-label, 15 bins) and brier
    (:func:`expected_calibration_error`, :func:`brier_score`). Undefined values (AUC with one class
    present, anything on an empty set) are NaN.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict = {"n": int(labels.size)}
    if labels.size == 0:
        nan = float("nan")
        return out | {"auc": nan, "f1": nan, "recall_at_precision": {_key(x): nan for x in PRECISION_LEVELS},
                      "tpr_at_fpr": {_key(x): nan for x in FPR_LEVELS}, "multiclass_loss": nan,
                      "max_beta_variance": nan, "accuracy": nan, "macro_f1": nan, "per_class": {},
                      "confusion_matrix": [], "ece": nan, "brier": nan}
    y, s = binary_view(labels, probs, positive)
    pts = operating_points(y, s)
    out["auc"] = roc_auc(y, s)
    out["f1"] = f1_at(y, s)
    out["recall_at_precision"] = recall_at_precision(y, s, _pts=pts)
    out["tpr_at_fpr"] = tpr_at_fpr(y, s, _pts=pts)
    out["multiclass_loss"] = multiclass_loss(labels, probs, discrepancy)
    out["max_beta_variance"] = max_beta_variance(y, s, _pts=pts)
    out.update(multiclass_view(labels, probs))
    out["ece"] = expected_calibration_error(labels, probs)
    out["brier"] = brier_score(labels, probs)
    return out


def _key(level: float) -> str:
    return f"{level:g}"


def mean_std(values: Sequence) -> tuple[float, float | None]:
    """Mean and sample std (ddof = 1) over repeats, ignoring undefined entries (None/NaN/inf).

    The mean is NaN when nothing is defined; the std is None for fewer than two values.
    """
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def to_jsonable(value):
    """Replace NaN/inf by None so results serialise as strict JSON."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------- the metric names
#: The paper's Table 2 metrics (then the calibration metrics ECE and Brier), once for every table that shows
#: them (simulation results, the report, the terminal): (flat name in result files, display name, path in
#: :func:`evaluate`'s output).
TABLE2: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("auc", "AUC", ("auc",)),
    ("f1", "F1", ("f1",)),
    *((f"r_at_p{round(p * 100)}", f"R@P{round(p * 100)}", ("recall_at_precision", _key(p))) for p in PRECISION_LEVELS),
    *((f"tpr_at_fpr{round(f * 100)}", f"TPR@{round(f * 100)}%FPR", ("tpr_at_fpr", _key(f))) for f in FPR_LEVELS),
    ("max_beta_variance", "max Var", ("max_beta_variance",)),
    ("multiclass_loss", "MC loss", ("multiclass_loss",)),
    ("accuracy", "Acc", ("accuracy",)),
    ("macro_f1", "macro-F1", ("macro_f1",)),
    ("ece", "ECE", ("ece",)),
    ("brier", "Brier", ("brier",)),
)
#: Display names by flat name (Table 2 and the other per-round metrics the tables show).
METRIC_NAMES: dict[str, str] = {key: name for key, name, _ in TABLE2}


def flat_metrics(ev: dict) -> dict:
    """:func:`evaluate`'s nested output under the result format's flat names, in :data:`TABLE2` order
    (None where ``ev`` lacks a metric)."""
    out = {}
    for key, _, path in TABLE2:
        value = ev
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        out[key] = value
    return out
