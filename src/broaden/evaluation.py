"""``broaden evaluate``: DESIGN §4 metrics of one or more scored tables (the Python face of the command)."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from broaden import io
from broaden._typing import ArrayLike, TableLike
from broaden.errors import ScoredTableError
from broaden.io.inputs import as_scored, load_scored, source_name
from broaden.metrics import evaluate as evaluate_arrays


def evaluate(
    scored: TableLike | None = None,
    *,
    labels: ArrayLike | None = None,
    probs: ArrayLike | None = None,
    positive: Iterable[int] | None = None,
    discrepancy: str = "ordinal",
    columns: io.Columns = io.DEFAULT_COLUMNS,
    logits: bool = False,
) -> dict:
    """Metrics of the labelled rows of a scored table (rows with a null label are skipped).

    ``scored`` is any input :func:`broaden.io.inputs.as_scored` takes; or give the arrays, as cleanlab does:
    ``evaluate(labels=y, probs=P)`` (-1 = unlabelled). ``positive`` chooses the classes of the binary view
    (default: every class but 0). The array-level function is :func:`broaden.metrics.evaluate`.
    """
    scored = as_scored(scored, labels=labels, probs=probs, columns=columns, what="scored")
    source = source_name(scored, "table")
    table = load_scored(scored, columns=columns, require=("id", "label", "probs"), logits=logits,
                        read_columns=[columns.id, columns.label, columns.probs], what=source)
    labels = io.labels_array(table.column(columns.label))
    keep = labels >= 0
    if not keep.any():
        raise ScoredTableError(f"{source}: column {columns.label!r} has no labelled rows to evaluate")
    probs = io.list_matrix(table.column(columns.probs), dtype=np.float64)
    try:
        return evaluate_arrays(labels[keep], probs[keep], positive=positive, discrepancy=discrepancy)
    except ValueError as exc:  # --positive outside the table's classes, a one-class table, …
        raise ScoredTableError(f"{source}: column {columns.probs!r}: {exc}") from exc
