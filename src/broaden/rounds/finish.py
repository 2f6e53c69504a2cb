"""``round finish``: retrain on everything labelled so far, evaluate on the fixed eval set, close the round.

The classifier and its metrics are written (atomically) before the ledger marks the round finished, so
a crash in between leaves the round open and the next ``finish`` simply trains again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden import io
from broaden.metrics import evaluate, to_jsonable
from broaden.rounds.ledger import fault_point
from broaden.rounds.values import round_values
from broaden.rounds.overview import describe_open, open_items
from broaden.rounds.stopset import stop_set_predictions
from broaden.rounds.workspace import (
    Workspace, WorkspaceError, embedding_version, matrix, model_id, refuse_eval_ids,
)


EVAL_PREDICTIONS = "eval_predictions.parquet"  # id, label, probs of the round's model on the eval set


@dataclass
class RoundFinish:
    round: int
    trained_on: int
    model_id: str
    metrics: dict | None
    pending: int
    tied: int


def round_finish(ws: Workspace, *, round: int | None = None, allow_pending: bool = False) -> RoundFinish:
    cfg, cols = ws.config, ws.config.cols
    with ws.locked() as ledger:
        number = ws.open_round(ledger, round, "finish")
        consensus = ws.resolve(ledger)  # all rounds' votes: CROWDLAB rates the annotators on all of them
        resolved = consensus.items
        pending_items, tied_items = open_items(ledger.items(number), resolved, cfg.class_names)
        pending, tied = len(pending_items), len(tied_items)
        if (pending or tied) and not allow_pending:
            raise WorkspaceError(
                f"round {number}: {describe_open(pending_items, tied_items)}; import the missing labels (a tie "
                "needs one more vote), or pass --allow-pending to finish anyway (unlabelled items can be selected "
                "again later; `broaden status` lists them all)"
            )
        labeled = ws.labeled_table(ledger, consensus=consensus)
        if labeled.num_rows == 0:
            raise WorkspaceError(f"round {number}: nothing is labelled yet, so there is nothing to train on")
        refuse_eval_ids(cfg, labeled.column(cols.id).to_pylist(), f"round {number}: refusing to train on")
        versions = sorted(set(labeled.column("embedding_version").to_pylist()))
        if len(versions) > 1:
            raise WorkspaceError(f"labelled items mix embedding versions {', '.join(versions)}; "
                                 "one classifier must be trained on one embedding model")
        clf = ws.new_classifier()
        X = matrix(labeled, cols.embedding)
        clf.fit(X, np.asarray(labeled.column(cols.label)), num_classes=cfg.num_classes)
        rel = Path("models") / f"round-{number:04d}"
        clf.save(ws.path / rel)
        metrics = {"model": {"path": str(rel), "id": model_id(ws.path / rel), "embedding_version": versions[0],
                             "trained_on": labeled.num_rows},
                   "pending": pending, "tied": tied, "label_resolution": consensus.method}
        if cfg.eval:
            evaluation, eval_X, eval_y = _evaluate(ws, clf, versions[0], number)
            metrics["eval"] = to_jsonable(evaluation)
            # What each strategy's items of this round were worth: --strategy auto learns from it.
            metrics["strategy_values"] = to_jsonable(round_values(
                labeled, number, X, eval_X, eval_y, label_col=cols.label, num_classes=cfg.num_classes,
                fit=lambda X_, y_: ws.new_classifier().fit(X_, y_, num_classes=cfg.num_classes), full_model=clf,
                seed=cfg.seed))
        # Predictions on the fixed stop set: consecutive rounds' agreement is the stopping signal in status.
        metrics["stop_set"] = stop_set_predictions(ws, ledger.round(number)["pool"], clf, versions[0])
        io.write_text(json.dumps(metrics, indent=2), ws.round_dir(number) / "metrics.json")
        fault_point("round-finish:model-saved")
        ledger.finish_round(number, metrics=metrics)
    return RoundFinish(number, labeled.num_rows, metrics["model"]["id"], metrics.get("eval"), pending, tied)


def _evaluate(ws: Workspace, clf, trained_version: str, number: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The eval metrics, and the eval set's embeddings and labels (for the strategies' values). The eval
    predictions are kept too (``rounds/NNNN/eval_predictions.parquet``: the report's curves and reliability)."""
    cfg, cols = ws.config, ws.config.cols
    table = io.read_table(cfg.eval, validator=io.Validator(columns=cols, require=("id", "label", "embedding"),
                                                           num_classes=cfg.num_classes))
    labels = io.labels_array(table.column(cols.label))
    table = table.filter(np.asarray(labels >= 0))
    version = embedding_version(cfg.eval, table, cfg)
    if version != trained_version:
        raise WorkspaceError(f"{cfg.eval}: eval embeddings are version {version!r}, the classifier was trained on "
                             f"{trained_version!r}; evaluate with embeddings of one version")
    X, y = matrix(table, cols.embedding), io.labels_array(table.column(cols.label))
    probs = np.asarray(clf.predict_proba(X))
    io.write_table(pa.table({"id": table.column(cols.id), "label": pa.array(y, pa.int64()),
                             "probs": io.matrix_to_list_array(probs.astype(np.float32))}),
                   ws.round_dir(number) / EVAL_PREDICTIONS)
    return evaluate(y, probs, positive=cfg.positive, discrepancy=cfg.discrepancy), X, y
