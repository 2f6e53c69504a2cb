"""Readers that turn a result folder into :class:`~broaden.report.data.ReportData`.

``load`` recognises a ``broaden simulate`` result folder (``results.json`` / ``config.json`` + ``repeats/``)
and a rounds workspace (``ledger.sqlite``). Readers only read: they never train, score or write.
"""
from __future__ import annotations

from pathlib import Path

from broaden.report.data import ReportData
from broaden.report.items import MediaContext
from broaden.report.sources.common import ReportError


def load(path: Path, report_dir: Path) -> ReportData:
    from broaden.report.sources.simulation import is_simulation, load_simulation
    from broaden.report.sources.workspace import is_workspace, load_workspace

    if not path.is_dir():
        raise ReportError(f"{path}: no such folder; give a `broaden simulate` result folder or a workspace")
    ctx = MediaContext(base_dir=path, report_dir=report_dir)
    if is_workspace(path):
        return load_workspace(path, ctx)
    if is_simulation(path):
        return load_simulation(path, ctx)
    raise ReportError(
        f"{path}: neither a simulation result folder (results.json, or config.json with repeats/) nor a rounds "
        "workspace (ledger.sqlite)"
    )


__all__ = ["ReportError", "load"]
