"""Helpers shared by the source readers: safe JSON, optional Parquet, explorer cases, metric columns."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden import io
from broaden.errors import BroadenError
from broaden.metrics import discrepancy
from broaden.report.data import ExplorerCase, ExplorerData, MetricColumn

MAX_CASES = 300

TABLE2_COLUMNS = (
    MetricColumn("auc", "AUC"),
    MetricColumn("f1", "F1"),
    *(MetricColumn(f"r_at_p{p}", f"R@P{p}") for p in (40, 50, 60, 70, 80, 90)),
    MetricColumn("tpr_at_fpr1", "TPR@1%FPR"),
    MetricColumn("accuracy", "Acc"),
    MetricColumn("macro_f1", "macro-F1"),
    MetricColumn("multiclass_loss", "MC loss", higher_is_better=False),
    MetricColumn("max_beta_variance", "max Var", higher_is_better=False, digits=4),
)


class ReportError(BroadenError):
    """A result folder or workspace the report cannot read; the message names the file and what is wrong."""


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from exc
    except ValueError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_parquet(paths: Iterable[Path], columns: list[str] | None = None) -> pa.Table | None:
    """The concatenation of the existing files among ``paths`` (None when there are none)."""
    parts = [io.read_table(p, columns=columns) for p in paths if p.is_file()]
    if not parts:
        return None
    return pa.concat_tables(parts, promote_options="permissive")


def flat_metrics(ev: Mapping) -> dict[str, float]:
    """:func:`broaden.metrics.evaluate` output under the result format's flat names (Table 2 columns)."""
    flat = {k: ev.get(k) for k in ("auc", "f1", "accuracy", "macro_f1", "multiclass_loss", "max_beta_variance")}
    for key, value in (ev.get("recall_at_precision") or {}).items():
        flat[f"r_at_p{round(float(key) * 100)}"] = value
    flat["tpr_at_fpr1"] = (ev.get("tpr_at_fpr") or {}).get("0.01")
    return {k: (math.nan if v is None else float(v)) for k, v in flat.items()}


def item_discrepancy(label, probs, kind: str) -> float | None:
    if label is None or probs is None or label < 0 or label >= len(probs):
        return None
    return float(discrepancy(np.array([label]), np.asarray([probs], dtype=np.float64), kind)[0])


def explorer_data(cases: list[ExplorerCase], note: str) -> ExplorerData | None:
    """Keep the seeds with the largest discrepancy first (ties: by id), at most MAX_CASES of them."""
    if not cases:
        return None
    cases = sorted(cases, key=lambda c: (-(c.seed.discrepancy if c.seed.discrepancy is not None else -1.0),
                                         c.seed.id))
    return ExplorerData(cases[:MAX_CASES], total_seeds=len(cases), note=note)


def split_text(text: str | None, names: list[str] | None, sep: str = " | ") -> dict[str, str]:
    """A joined text (``a | b``) back into named fields when the names fit, else one ``text`` field."""
    if text in (None, ""):
        return {}
    parts = str(text).split(sep)
    if names and len(parts) == len(names):
        return dict(zip(names, parts))
    return {"text": str(text)}
