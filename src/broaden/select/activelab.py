"""ActiveLab (Goh & Mueller 2023; ``cleanlab.multiannotator.get_active_learning_scores``): relabel or label new.

With several annotators, the most useful next label may be another vote on an item already labelled (a tie,
a low-quality annotator's label) rather than a new item. ActiveLab gives both kinds one comparable score in
0 … 1, lower = more informative:

- an item with annotations: CROWDLAB's consensus quality (Goh, Tkachenko & Mueller 2022) shrunk towards 1/K
  by how much weight its annotators and the model carry;
- a new item: the model's (temperature-scaled) top probability shrunk the same way.

The strategy ``activelab`` reads the votes from the option ``annotations`` (long form: ``id``, ``annotator``,
``label``; a table, a DataFrame or a CSV / Parquet file). Pool rows named there are *relabel candidates*:
only a relabelling strategy may pick them (the other strategies of a mix skip them; a filled label column
does not hide them from ``activelab``, ``exclude`` does), and their picks carry ``relabel = True``.

The labelled part (temperature, model and annotator weights) is computed once, as cleanlab computes it; the
pool is then scored batch by batch with the same weights, so a 10M-row pool streams. Tests check every score
against ``get_active_learning_scores`` called directly on the same arrays.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden.errors import SelectionError
from broaden.io.ids import IdSet
from broaden.io.inputs import to_arrow
from broaden.io.pool import Pool
from broaden.io.table import id_keys, list_matrix, read_table
from broaden.select.registry import SelectContext, register_strategy
from broaden.select.strategies import batch_probs, stream_top

ANNOTATION_COLUMNS = ("id", "annotator", "label")


class ActiveLab:
    """ActiveLab scores for labelled items (``labelled``) and any batch of new items (:meth:`unlabelled`).

    ``labels_multiannotator``: (N, M) labels with NaN where annotator m did not label item n (every row has
    at least one label); ``pred_probs``: (N, K) model probabilities of those items; ``num_classes`` is K
    when N = 0. Mirrors ``cleanlab.multiannotator.get_active_learning_scores`` step by step.
    """

    def __init__(self, labels_multiannotator: np.ndarray, pred_probs: np.ndarray, num_classes: int | None = None):
        from cleanlab.internal.multiannotator_utils import (
            assert_valid_inputs_multiannotator, find_best_temp_scaler, temp_scale_pred_probs,
        )
        from cleanlab.multiannotator import get_label_quality_multiannotator, get_majority_vote_label
        from cleanlab.rank import get_label_quality_scores

        labels = np.asarray(labels_multiannotator, dtype=np.float64)
        pred_probs = np.asarray(pred_probs, dtype=np.float64)
        self.num_classes = int(pred_probs.shape[1] if len(pred_probs) else num_classes)
        self._scale = temp_scale_pred_probs
        if len(labels) == 0:  # no labelled data: cleanlab's defaults for unlabelled-only scoring
            self.temperature, self.model_weight, self.avg_annotator_weight = 1.0, 1.0, 1.0
            self.labelled = np.empty(0)
            return
        if ((~np.isnan(labels)).sum(axis=1) == 1).all():  # one label per item: no annotator weights to fit
            assert_valid_inputs_multiannotator(labels, pred_probs, allow_single_label=True)
            consensus = get_majority_vote_label(labels, pred_probs, verbose=False)
            quality = get_label_quality_scores(consensus, pred_probs)
            self.temperature, self.model_weight = 1.0, 1.0
            annotator_weight = np.ones(labels.shape[1])
        else:
            self.temperature = find_best_temp_scaler(labels, pred_probs)
            info = get_label_quality_multiannotator(labels, temp_scale_pred_probs(pred_probs, self.temperature),
                                                    return_annotator_stats=False, return_detailed_quality=False,
                                                    return_weights=True, verbose=False)
            quality = info["label_quality"]["consensus_quality_score"].to_numpy()
            self.model_weight, annotator_weight = info["model_weight"], info["annotator_weight"]
        self.avg_annotator_weight = float(np.mean(annotator_weight))
        weight = np.where(np.isnan(labels), 0.0, annotator_weight[None]).sum(axis=1) + self.model_weight
        self.labelled = (weight * quality + self.avg_annotator_weight / self.num_classes) / \
            (weight + self.avg_annotator_weight)

    def unlabelled(self, pred_probs: np.ndarray) -> np.ndarray:
        """Scores of new items from their model probabilities (n, K)."""
        top = self._scale(np.asarray(pred_probs, dtype=np.float64), self.temperature).max(axis=1)
        return (self.model_weight * top + self.avg_annotator_weight / self.num_classes) / \
            (self.model_weight + self.avg_annotator_weight)


# ------------------------------------------------------------------------------------ annotations
def read_annotations(annotations) -> pa.Table:
    """The votes as a table with ``id``, ``annotator`` (text) and ``label`` (int) columns: a path (CSV, TSV,
    Parquet) or any table-like value; one vote per annotator and item, the last row winning."""
    if isinstance(annotations, (str, os.PathLike)):
        path = Path(annotations)
        if not path.exists():
            raise SelectionError(f"annotations: {path}: no such file")
        if path.suffix.lower() in (".csv", ".tsv"):
            from pyarrow import csv

            table = csv.read_csv(path, parse_options=csv.ParseOptions(
                delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        else:
            table = read_table(path)
        where = str(path)
    else:
        table = to_arrow(annotations, what="annotations")
        if table is None:
            raise SelectionError(f"annotations: expected a table of votes (id, annotator, label) or a CSV / Parquet "
                                 f"file, got a {type(annotations).__name__}")
        where = "annotations"
    missing = [c for c in ANNOTATION_COLUMNS if c not in table.column_names]
    if missing:
        raise SelectionError(f"{where}: no column(s) {', '.join(map(repr, missing))}; annotations need "
                             f"{', '.join(ANNOTATION_COLUMNS)} (one row per vote)")
    table = table.select(list(ANNOTATION_COLUMNS)).drop_null()
    labels = table.column("label")
    if not pa.types.is_integer(labels.type):
        raise SelectionError(f"{where}: column 'label' must hold class indices (integers), got {labels.type}")
    return pa.table({"id": table.column("id"), "annotator": table.column("annotator").cast(pa.string()),
                     "label": labels.cast(pa.int64())})


def _wide(votes: pa.Table, keys: np.ndarray, num_classes: int) -> np.ndarray:
    """(len(keys), annotators) labels, NaN where an annotator did not label an item, rows in ``keys`` order."""
    ids = id_keys(votes.column("id"))
    if np.issubdtype(keys.dtype, np.integer) != np.issubdtype(ids.dtype, np.integer):
        ids, keys = ids.astype(str), keys.astype(str)  # the pool's and the votes' ids spelt differently
    annotators = sorted(set(votes.column("annotator").to_pylist()))
    col = {a: j for j, a in enumerate(annotators)}
    row = {k: i for i, k in enumerate(keys.tolist())}
    wide = np.full((len(keys), len(annotators)), np.nan)
    for k, a, label in zip(ids.tolist(), votes.column("annotator").to_pylist(), votes.column("label").to_pylist()):
        if not 0 <= label < num_classes:
            raise SelectionError(f"annotations: label {label} of id {k!r} is outside 0..{num_classes - 1}")
        if k in row:
            wide[row[k], col[a]] = label  # later rows overwrite: an annotator's last vote counts
    return wide


def activelab_strategy(pool, n: int, ctx: SelectContext):
    """Relabel or label new: the ``n`` lowest ActiveLab scores among the pool's new items and its rows
    named in ``annotations`` (reported as the scores themselves, ranked ascending)."""
    annotations = ctx.options.get("annotations")
    source = Pool.of(pool, ctx.columns)
    votes = read_annotations(annotations) if annotations is not None else None
    if votes is not None and votes.num_rows:
        wanted = np.unique(id_keys(votes.column("id")))
        rows = source.fetch_rows(wanted, columns=[ctx.columns.probs], missing="skip")
        keys = id_keys(rows.column(ctx.columns.id))
        if len(keys) < len(wanted):
            absent = ~IdSet(keys).contains(wanted)
            raise SelectionError(f"annotations name {int(absent.sum())} id(s) that are not in the pool, e.g. "
                                 f"{wanted[absent].tolist()[0]!r}; put the items to relabel in the pool")
        probs = list_matrix(rows.column(ctx.columns.probs), dtype=np.float64)
        scorer = ActiveLab(_wide(votes, keys, probs.shape[1]), probs)
    else:
        keys, scorer = np.empty(0, dtype=np.int64), None
    relabel = IdSet(keys)
    by_key = dict(zip(keys.tolist(), scorer.labelled.tolist())) if scorer is not None else {}

    def priority(batch_keys, batch):
        probs = batch_probs(batch, ctx.columns.probs)
        nonlocal scorer
        if scorer is None:  # no votes at all: every item is new
            scorer = ActiveLab(np.empty((0, 0)), np.empty((0, probs.shape[1])), probs.shape[1])
        scores = scorer.unlabelled(probs)
        again = relabel.contains(batch_keys)
        if again.any():
            scores[again] = [by_key[k] for k in batch_keys[again].tolist()]
        return -scores  # lower ActiveLab score = more informative = picked first

    ids, pri = stream_top(pool, n, ctx, priority, prob_cols=[ctx.columns.probs], description="activelab scores")
    details = pa.table({"relabel": pa.array(relabel.contains(np.asarray(ids)) if len(ids) else [], pa.bool_())})
    return ids, -pri, details


# relabels=True: rows named in ``annotations`` are this strategy's to pick, though their labels are known.
register_strategy("activelab", activelab_strategy, options=("annotations",), relabels=True)
