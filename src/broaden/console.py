"""Terminal tables (rich) in the shape of the paper's Table 2: one row per run, file or group."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from broaden.metrics import TABLE2

# The terminal's Table 2 columns, in this order; names and paths from the one table in broaden.metrics.
_PATHS = {key: (name, path) for key, name, path in TABLE2}
METRIC_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    _PATHS[key] for key in ("auc", "f1", "r_at_p40", "r_at_p50", "r_at_p60", "r_at_p70", "r_at_p80", "r_at_p90",
                            "tpr_at_fpr1", "multiclass_loss", "max_beta_variance", "accuracy", "macro_f1", "ece",
                            "brier")
)


def lookup(result: Mapping, path: tuple[str, ...]):
    value = result
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and abs(value) < 10 ** -digits and value != 0:
        return f"{value:.1e}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def make_console(stderr: bool = False) -> Console:
    """A console that does not squeeze wide tables to 80 columns when output is piped or logged."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)


def print_table(title: str | None, header: Sequence[str], rows: Iterable[Sequence[str]], *,
                console: Console | None = None, labels: int = 1) -> None:
    """A rich table whose first ``labels`` columns name the row and the rest hold right-aligned numbers.

    Cells are printed literally (no rich markup), so data-derived names cannot restyle the output.
    """
    table = Table(title=title, header_style="bold")
    for i, name in enumerate(header):
        table.add_column(name, no_wrap=i < labels, justify="left" if i < labels else "right")
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))
    (console or make_console()).print(table)


def print_metrics_table(results: Mapping[str, Mapping], *, title: str | None = None,
                        console: Console | None = None) -> None:
    """One row per named result dict from :func:`broaden.metrics.evaluate`."""
    rows = ((run, str(result.get("n", "")), *(fmt(lookup(result, path)) for _, path in METRIC_COLUMNS))
            for run, result in results.items())
    print_table(title, ["run", "n", *(name for name, _ in METRIC_COLUMNS)], rows, console=console)
