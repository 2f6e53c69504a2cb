"""``--strategy auto`` in annotation rounds (issue 20): what each strategy's items were worth, measured when a
round finishes, and what the next ``round start --strategy auto`` learns from.

``round finish`` refits the workspace's classifier on everything labelled and again without an equal number
of each arm's items of the round (:func:`broaden.auto.strategy_values`, equal-size leave-n-out) and stores
``strategy_values`` (per arm: value per item with its standard error, the accuracy and macro-F1
counterparts, counts) in the round's metrics in the ledger, next to the yield ``status`` reports.
``round start --strategy auto`` reads them back, oldest round first, as the allocation's history; the
latest finished round's items are the recent partition the error-clustering diagnostic looks at.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from broaden.rounds.ledger import Ledger

AUTO = "auto"


def is_auto(strategy: str | None) -> bool:
    return isinstance(strategy, str) and strategy.strip() == AUTO


def auto_options(ledger: Ledger) -> dict:
    """``auto_history`` and ``auto_recent`` for ``select(..., "auto")`` from the finished rounds."""
    history, recent = [], None
    for r in ledger.rounds():
        if r["status"] != "finished":
            continue
        values = (json.loads(r["metrics"]) if r["metrics"] else {}).get("strategy_values") or {}
        history.append({arm: {"value": v["value"], "se": v.get("se")} for arm, v in values.items()})
        recent = [it["item_key"] for it in ledger.items(r["round"])]
    return {"auto_history": history, **({"auto_recent": recent} if recent else {})}


def round_values(labeled: pa.Table, number: int, X: np.ndarray, eval_X: np.ndarray, eval_y: np.ndarray, *,
                 label_col: str, num_classes: int, fit=None, full_model=None, seed: int = 0) -> dict:
    """Leave-n-out value of round ``number``'s items (rows of ``labeled`` with round == number); ``fit``
    refits the workspace's classifier, ``full_model`` is the one already trained on every row."""
    from broaden.auto.allocation import arm_of
    from broaden.auto.value import strategy_values
    from broaden.io import labels_array

    rounds = labeled.column("round").to_numpy(zero_copy_only=False)
    strategies = labeled.column("strategy").to_pylist()
    arms = [arm_of(s) if r == number and s else None for r, s in zip(rounds, strategies)]
    if not any(arms):
        return {}
    return strategy_values(X, labels_array(labeled.column(label_col)), arms, eval_X, eval_y, fit=fit,
                           full_model=full_model, num_classes=num_classes, seed=seed)
