"""``broaden report``: one self-contained HTML page from a simulation result folder or a rounds workspace.

The page holds the paper's Table 1 / Table 2 analogues, PR and ROC curves with the R@P operating points,
per-round trends and bad-case yields, the Lookalike-Threshold score distribution, the bad-case explorer
and the latest confusion matrices. It reads result files only (DESIGN §8): it never trains or scores.
"""
from __future__ import annotations

import os
from pathlib import Path

from broaden._lazy import command_package
from broaden.report.sources import ReportError

DEFAULT_NAME = "report.html"


def report(dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report of ``dir`` to ``out`` (default ``dir/report.html``) atomically; returns its path."""
    from broaden.io import write_text
    from broaden.report.page import render_page
    from broaden.report.sources import load

    source = Path(dir)
    target = Path(out) if out is not None else source / DEFAULT_NAME
    if target.is_dir():
        target = target / DEFAULT_NAME
    data = load(source, target.resolve().parent)
    return write_text(render_page(data), target)


command_package(__name__)  # ``broaden.report(...)`` is ``broaden.report.report(...)``

__all__ = ["ReportError", "report"]
