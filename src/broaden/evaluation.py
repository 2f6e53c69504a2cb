"""``broaden evaluate``: DESIGN §4 metrics of one or more scored tables (the Python face of the command)."""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from broaden import io
from broaden.errors import ScoredTableError
from broaden.metrics import evaluate as evaluate_arrays


def evaluate(
    scored: str | os.PathLike | pa.Table,
    *,
    positive: Iterable[int] | None = None,
    discrepancy: str = "ordinal",
    columns: io.Columns = io.DEFAULT_COLUMNS,
    logits: bool = False,
) -> dict:
    """Metrics of the labelled rows of a scored table (rows with a null label are skipped).

    ``positive`` chooses the classes of the binary view (default: every class but 0).
    """
    validator = io.Validator(columns=columns, require=("id", "label", "probs"), logits=logits)
    if isinstance(scored, pa.Table):
        table, source = validator(scored, "table"), "table"
        validator.finish()
    else:
        source = str(scored)
        table = io.read_table(scored, columns=[columns.id, columns.label, columns.probs], validator=validator)
    labels = io.labels_array(table.column(columns.label))
    keep = labels >= 0
    if not keep.any():
        raise ScoredTableError(f"{source}: column {columns.label!r} has no labelled rows to evaluate")
    probs = io.list_matrix(table.column(columns.probs), dtype=np.float64)
    try:
        return evaluate_arrays(labels[keep], probs[keep], positive=positive, discrepancy_kind=discrepancy)
    except ValueError as exc:  # --positive outside the table's classes, a one-class table, …
        raise ScoredTableError(f"{source}: column {columns.probs!r}: {exc}") from exc
