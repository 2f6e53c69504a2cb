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
from broaden.metrics import METRIC_NAMES, discrepancy
from broaden.metrics import flat_metrics as metrics_flat
from broaden.report.data import ExplorerCase, ExplorerData, MetricColumn

MAX_CASES = 300

TABLE2_COLUMNS = (
    *(MetricColumn(k, METRIC_NAMES[k]) for k in ("auc", "f1", "r_at_p40", "r_at_p50", "r_at_p60", "r_at_p70",
                                                  "r_at_p80", "r_at_p90", "tpr_at_fpr1", "accuracy", "macro_f1")),
    MetricColumn("multiclass_loss", METRIC_NAMES["multiclass_loss"], higher_is_better=False),
    MetricColumn("max_beta_variance", METRIC_NAMES["max_beta_variance"], higher_is_better=False, digits=4),
)
# Calibration of the same model (Guo et al. 2017 ECE, Brier): where the source records them.
CALIBRATION_COLUMNS = tuple(MetricColumn(k, METRIC_NAMES[k], higher_is_better=False) for k in ("ece", "brier"))


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
    return {k: (math.nan if v is None else float(v)) for k, v in metrics_flat(dict(ev)).items()}


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
