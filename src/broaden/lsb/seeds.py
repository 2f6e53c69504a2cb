"""Seed bad cases (paper §3.1, Algorithm 1 step 1; DESIGN.md §3).

A labelled item is a bad case when its discrepancy d(x) between the human label and the model's
probabilities exceeds τ1. ``ordinal`` d = |y − E[x]| / (C − 1) is the paper's Eq. 11 form (graded labels);
``nominal`` d = 1 − p_y for unordered classes. Seeds are the bad cases in decreasing d (ties by id),
optionally without the ones confident learning flags as mislabelled, capped per label and overall.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from broaden._lazy import renamed
from broaden._typing import LabeledLike
from broaden.errors import SeedError
from broaden.io import DEFAULT_COLUMNS, Columns, id_keys, labels_array, list_matrix, load_scored
from broaden.metrics import discrepancy as _discrepancy

DISCREPANCIES = ("ordinal", "nominal")


@dataclass
class LabeledView:
    """The labelled rows of a scored table with what seeding and the Lookalike Threshold need."""

    table: pa.Table          # labelled rows only (label not null)
    labels: np.ndarray
    probs: np.ndarray
    pred: np.ndarray
    d: np.ndarray
    keys: np.ndarray         # id keys, for deterministic tie-breaks

    def embeddings(self, columns: Columns) -> np.ndarray:
        return list_matrix(self.table.column(columns.embedding))

    def lookalike_targets(self, seed_threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, z): z = 1 for bad cases (d > τ1), 0 for consistent items (ŷ = y); others dropped."""
        bad = self.d > seed_threshold
        rows = np.flatnonzero(bad | (self.pred == self.labels))
        return rows, bad[rows].astype(np.int64)


def load_labeled(labeled: LabeledLike, *, discrepancy: str = "ordinal", columns: Columns = DEFAULT_COLUMNS,
                 require_embedding: bool = False, logits: bool = False) -> LabeledView:
    """Load and validate a labelled scored table (any input :func:`broaden.io.inputs.as_scored` takes) and
    compute d(x) for its labelled rows."""
    if discrepancy not in DISCREPANCIES:
        raise SeedError(f"unknown discrepancy {discrepancy!r}; choose one of {', '.join(DISCREPANCIES)}")
    require = ("id", "label", "probs") + (("embedding",) if require_embedding else ())
    table = load_scored(labeled, columns=columns, require=require, logits=logits, what="labelled table")
    labels = labels_array(table.column(columns.label))
    keep = labels >= 0
    if not keep.any():
        raise SeedError(f"labelled table: column {columns.label!r} has no labels (every row is null)")
    if not keep.all():
        table = table.filter(pa.array(keep))
        labels = labels[keep]
    probs = list_matrix(table.column(columns.probs), dtype=np.float64)
    return LabeledView(table, labels, probs, probs.argmax(axis=1), _discrepancy(labels, probs, discrepancy),
                       id_keys(table.column(columns.id)))


def select_seeds(view: LabeledView, *, seed_threshold: float, max_seeds: int | None,
                 per_class_cap: int | None = None, denoise: bool = False) -> np.ndarray:
    """Row indices of the seeds in ``view``, best (largest d, then smallest id) first."""
    if not 0 <= seed_threshold < 1:
        raise SeedError(f"seed_threshold (τ1) must be in [0, 1), got {seed_threshold}")
    for name, cap in (("max_seeds", max_seeds), ("per_class_cap", per_class_cap)):
        if cap is not None and cap < 0:
            raise SeedError(f"{name} must be >= 0, got {cap}")
    eligible = view.d > seed_threshold
    if denoise:
        try:
            from broaden.select.cleaning import label_issue_mask
        except ImportError as exc:  # pragma: no cover - ships with broaden
            raise SeedError("seed denoising needs broaden.select.cleaning (confident learning)") from exc
        # Flagged over the whole labelled set: confident learning estimates per-class thresholds from it.
        eligible &= ~label_issue_mask(view.labels, view.probs)
    rows = np.flatnonzero(eligible)
    rows = rows[np.lexsort((view.keys[rows], -view.d[rows]))]
    if per_class_cap is not None:
        # Rank of each row within its label, in seed order: keep the first `per_class_cap` of each label.
        lab = view.labels[rows]
        order = np.argsort(lab, kind="stable")
        starts = np.searchsorted(lab[order], lab[order])
        within = np.empty(len(rows), dtype=np.int64)
        within[order] = np.arange(len(rows)) - starts
        rows = rows[within < per_class_cap]
    return rows if max_seeds is None else rows[:max_seeds]


def seeds_table(view: LabeledView, rows: np.ndarray, columns: Columns) -> pa.Table:
    """Seed rows: id, discrepancy, label, pred, then the labelled table's other columns."""
    t = view.table.take(pa.array(rows, type=pa.int64()))
    front = {
        columns.id: t.column(columns.id),
        "discrepancy": pa.array(view.d[rows], pa.float64()),
        columns.label: pa.array(view.labels[rows], pa.int64()),
        "pred": pa.array(view.pred[rows], pa.int64()),
    }
    rest = {n: t.column(n) for n in t.schema.names if n not in front}
    return pa.table({**front, **rest})


@renamed(threshold="seed_threshold")
def seed_bad_cases(
    labeled: LabeledLike,
    *,
    seed_threshold: float = 0.5,
    max_seeds: int | None = 1000,
    discrepancy: str = "ordinal",
    per_class_cap: int | None = None,
    denoise: bool = False,
    columns: Columns = DEFAULT_COLUMNS,
    logits: bool = False,
) -> pa.Table:
    """Seed bad cases of a labelled scored table (path, table, DataFrame, …): d > ``seed_threshold``,
    best first.

    ``per_class_cap`` bounds the seeds per human label; ``denoise`` drops items that confident learning
    (cleanlab, via :func:`broaden.select.cleaning.label_issue_mask`) flags as likely mislabelled, since
    broadening around a labelling mistake buys correctly-labelled look-alikes.
    """
    view = load_labeled(labeled, discrepancy=discrepancy, columns=columns, logits=logits)
    rows = select_seeds(view, seed_threshold=seed_threshold, max_seeds=max_seeds, per_class_cap=per_class_cap,
                        denoise=denoise)
    return seeds_table(view, rows, columns)
