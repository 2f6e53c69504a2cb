"""Dirty-label elimination on the labelled set (DESIGN.md §2, HW batch mining; confident learning).

Detection is delegated to cleanlab (Northcutt et al., "Confident Learning", JAIR 2021); this module adds
the parts broaden needs around it: unlabelled rows (label -1) are ignored, the share of suspected
mislabels that is *kept* can be bounded (HW practice: drop only as many of the worst suspects as needed),
and the ``broaden clean`` command refuses to clean an evaluation split.

The probabilities must be out-of-sample (cross-validated or from a model that never trained on these
rows); in-sample probabilities agree with their own labels and hide the errors.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broaden._lazy import renamed
from broaden._typing import ArrayLike, LabeledLike
from broaden.errors import CleaningError
from broaden.io import (
    DEFAULT_COLUMNS, Columns, Pool, as_scored, check_writable, labels_array, list_matrix, load_scored, source_name,
    write_table,
)

METHODS = (
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
    "predicted_neq_given", "low_normalized_margin", "low_self_confidence",
)
QUALITY_SCORES = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
# Values of a `split` column (or of the `broaden.split` schema metadata, or tokens of the file name) that
# mark held-out data. Cleaning them with a model's opinion would bias every metric computed on them.
EVAL_SPLITS = frozenset({"test", "eval", "evaluation", "val", "valid", "validation", "dev", "holdout"})
SPLIT_COLUMN = "split"
SPLIT_METADATA_KEY = b"broaden.split"


def _check_inputs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.ndim != 2 or len(labels) != len(probs):
        raise CleaningError(
            f"labels must be 1-D and probs 2-D with one row per label; got labels {labels.shape}, "
            f"probs {probs.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise CleaningError(f"labels must be integers (-1 = unlabelled), got dtype {labels.dtype}")
    labels = labels.astype(np.int64, copy=False)
    bad = (labels < -1) | (labels >= probs.shape[1])
    if bad.any():
        i = int(np.argmax(bad))
        raise CleaningError(f"row {i}: label {labels[i]} is outside 0..{probs.shape[1] - 1} (or -1 = unlabelled)")
    if not np.isfinite(probs).all():
        i = int(np.argwhere(~np.isfinite(probs))[0, 0])
        raise CleaningError(f"row {i}: probabilities are not finite")
    # The table validator accepts sums within 1e-3, so a value such as -0.0009 can reach here; cleanlab
    # rejects anything outside [0, 1]. Clipping changes nothing on valid input (results equal cleanlab's).
    return labels, np.clip(probs, 0.0, 1.0)


def _require_two_classes(labels: np.ndarray, where: str = "") -> None:
    """Confident learning compares classes; cleanlab fails (or guesses) on labels of a single class."""
    classes = np.unique(labels[labels >= 0])
    if classes.size == 1:
        raise CleaningError(f"{where}every labelled row has class {int(classes[0])}; confident learning "
                            "needs labels of at least 2 classes")


def label_quality(labels: np.ndarray, probs: np.ndarray, *, score: str = "self_confidence") -> np.ndarray:
    """cleanlab's label quality score per row (0 … 1, low = likely mislabelled); NaN for unlabelled rows."""
    from cleanlab.rank import get_label_quality_scores

    if score not in QUALITY_SCORES:
        raise CleaningError(f"unknown label quality score {score!r}; choose one of {', '.join(QUALITY_SCORES)}")
    labels, probs = _check_inputs(labels, probs)
    quality = np.full(len(labels), np.nan)
    known = labels >= 0
    if known.any():
        quality[known] = get_label_quality_scores(labels[known], probs[known], method=score)
    return quality


def bounded_drop_count(n_suspects: int, n_labelled: int, dirty_bound: float | None) -> int:
    """How many of the worst suspects to flag so that at most ``dirty_bound`` of the kept rows are suspects.

    Flagging k of S suspects among n rows leaves (S − k) / (n − k) suspected; the smallest k with that
    ≤ b is ceil((S − b·n) / (1 − b)). ``None`` or 0 flags every suspect.
    """
    if dirty_bound is None or dirty_bound <= 0:
        return n_suspects
    if dirty_bound >= 1:
        return 0
    need = math.ceil((n_suspects - dirty_bound * n_labelled) / (1.0 - dirty_bound) - 1e-9)
    return int(min(max(need, 0), n_suspects))


@renamed(max_share="dirty_bound")
def label_issue_mask(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    dirty_bound: float | None = None,
    method: str = "prune_by_noise_rate",
    score: str = "self_confidence",
) -> np.ndarray:
    """Boolean mask, True = likely mislabelled (drop or relabel it); False for unlabelled rows (-1).

    ``probs`` must be out-of-sample. ``method`` is cleanlab's ``filter_by``. ``dirty_bound`` bounds the
    share of suspected mislabels that remain among the labelled rows once the flagged ones are removed:
    only the worst suspects (lowest ``score`` label quality, ties by row order) needed to get under the
    bound are flagged. ``None`` flags every suspect.
    """
    from cleanlab.filter import find_label_issues

    if method not in METHODS:
        raise CleaningError(f"unknown cleaning method {method!r}; choose one of {', '.join(METHODS)}")
    if dirty_bound is not None and not 0 <= dirty_bound <= 1:
        raise CleaningError(f"dirty_bound must be within 0 … 1, got {dirty_bound}")
    labels, probs = _check_inputs(labels, probs)
    mask = np.zeros(len(labels), dtype=bool)
    known = np.flatnonzero(labels >= 0)
    if known.size < 2:
        return mask
    _require_two_classes(labels)
    with warnings.catch_warnings():
        # cleanlab warns about classes with very few examples; small seed sets routinely have them.
        warnings.simplefilter("ignore", UserWarning)
        suspects = find_label_issues(labels[known], probs[known], filter_by=method, n_jobs=1)
    idx = known[suspects]
    keep = bounded_drop_count(idx.size, known.size, dirty_bound)
    if keep < idx.size:
        quality = label_quality(labels[idx], probs[idx], score=score)
        idx = idx[np.argsort(quality, kind="stable")[:keep]]
    mask[idx] = True
    return mask


@renamed(max_share="dirty_bound")
def rank_label_issues(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    dirty_bound: float | None = None,
    method: str = "prune_by_noise_rate",
    score: str = "self_confidence",
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the flagged rows, most likely mislabelled first, and their label quality."""
    mask = label_issue_mask(labels, probs, dirty_bound=dirty_bound, method=method, score=score)
    idx = np.flatnonzero(mask)
    quality = label_quality(np.asarray(labels)[idx], np.asarray(probs)[idx], score=score)
    order = np.argsort(quality, kind="stable")
    return idx[order], quality[order]


def check_not_eval_split(table: pa.Table, source: str | os.PathLike | None = None) -> None:
    """Refuse held-out data: a ``split`` column with an evaluation value in any row, ``broaden.split``
    schema metadata naming one, or — only when neither is present — a file/folder name with a token
    such as ``test``/``val``/``eval`` (``dev_set``, ``ag_news-test.parquet``; ``contest`` does not match)."""
    where = f"{source}: " if source else ""
    meta = (table.schema.metadata or {}).get(SPLIT_METADATA_KEY)
    if meta is not None and meta.decode("utf-8", "replace").strip().lower() in EVAL_SPLITS:
        raise CleaningError(
            f"{where}table metadata marks it as the {meta.decode()!r} split; refusing to clean an "
            "evaluation split (its labels must stay as annotated for metrics to mean anything)"
        )
    if SPLIT_COLUMN in table.schema.names:
        col = pc.utf8_lower(pc.utf8_trim_whitespace(table.column(SPLIT_COLUMN).cast(pa.string())))
        hit = pc.is_in(col, value_set=pa.array(sorted(EVAL_SPLITS))).to_numpy(zero_copy_only=False)
        if hit.any():
            row = int(np.argmax(hit))
            raise CleaningError(
                f"{where}column {SPLIT_COLUMN!r} row {row} is {col[row].as_py()!r}; refusing to clean "
                "evaluation rows — keep only the training split before running clean"
            )
    # The name is only a fallback: an explicit split column or metadata (already checked) decides.
    if source is not None and meta is None and SPLIT_COLUMN not in table.schema.names:
        tokens = set(re.split(r"[^a-z]+", Path(source).stem.lower()))
        if tokens & EVAL_SPLITS:
            raise CleaningError(
                f"{source}: the name marks an evaluation split ({', '.join(sorted(tokens & EVAL_SPLITS))}); "
                "refusing to clean it — if it is training data, rename it or add a 'split' column of 'train'"
            )


@renamed(max_share="dirty_bound")
def clean(
    labeled: LabeledLike | None = None,
    *,
    labels: ArrayLike | None = None,
    probs: ArrayLike | None = None,
    ids: ArrayLike | None = None,
    out: str | os.PathLike | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    dirty_bound: float | None = None,
    method: str = "prune_by_noise_rate",
    score: str = "self_confidence",
    logits: bool = False,
) -> pa.Table:
    """``broaden clean``: rank the labelled rows that are likely mislabelled, worst first.

    ``labeled`` is any input :func:`broaden.io.inputs.as_scored` takes; or give the arrays, as cleanlab's
    ``find_label_issues(labels, pred_probs)`` does: ``clean(labels=y, probs=P)`` (``ids`` default to the row
    numbers). Returns (and writes to ``out``, atomically) the flagged rows with ``issue_rank`` (1 = worst),
    ``label_quality``, ``predicted_label`` and every column of the input. The array-level functions are
    :func:`label_issue_mask` and :func:`rank_label_issues`.
    """
    data = Pool.of(as_scored(labeled, labels=labels, probs=probs, ids=ids, columns=columns, what="labeled"), columns)
    where = source_name(data.data)  # its path, or "table" for one in memory
    source = None if data.is_table else data.data  # only a file's name can mark an evaluation split
    if out is not None:
        check_writable(out)  # before reading: a bad --out fails at once
    # A table is validated like a file (a NaN or a 4th class in memory is the same error as on disk).
    table = load_scored(data.data, columns=columns, require=("id", "label", "probs"), logits=logits, what=where)
    check_not_eval_split(table, source)
    labels = labels_array(table.column(columns.label))
    probs = list_matrix(table.column(columns.probs), dtype=np.float64)
    if not (labels >= 0).any():
        raise CleaningError(f"{where}: column {columns.label!r} has no labels (all null)")
    _require_two_classes(labels, f"{where}: column {columns.label!r}: ")
    idx, quality = rank_label_issues(labels, probs, dirty_bound=dirty_bound, method=method, score=score)
    result = table.take(pa.array(idx, type=pa.int64()))
    extra = {
        "issue_rank": pa.array(np.arange(1, idx.size + 1, dtype=np.int64)),
        "label_quality": pa.array(quality),
        "predicted_label": pa.array(probs[idx].argmax(axis=1).astype(np.int64)),
    }
    for i, (name, arr) in enumerate(extra.items()):
        if name in result.schema.names:
            result = result.drop_columns([name])
        result = result.add_column(1 + i, name, arr)
    if out is not None:
        write_table(result, out)
    return result
