"""``broaden datasets list``: which datasets are in the data directory and whether they verify."""
from __future__ import annotations

import os

from broaden.datasets.locate import describe_origin, resolve_data_dir
from broaden.datasets.registry import DATASETS
from broaden.datasets.verify import DatasetStatus, DigestCache, dataset_status


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[DatasetStatus]:
    """Presence and checksum state of every registered dataset in the data directory."""
    cache = DigestCache()
    return [dataset_status(name, data_dir, cache=cache) for name in DATASETS]


def status_table(statuses: list[DatasetStatus], data_dir: str | os.PathLike | None = None):
    """A rich table of :func:`list_datasets`' result, titled with the data directory in use."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"datasets in {resolve_data_dir(data_dir)} ({describe_origin(data_dir)})",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("C", justify="right", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("files", justify="right", no_wrap=True)
    table.add_column("status", min_width=11)
    for s in statuses:
        if s.verified:
            state = "[green]verified[/]"
        elif not s.present:
            state = "[dim]not present[/]" + (" (fetchable)" if s.info.fetchable else "")
        else:
            state = f"[red]{escape(s.problem or 'failed')}[/]"
        table.add_row(s.info.name, f"{s.info.num_rows:,}", str(s.info.num_classes), s.info.task,
                      f"{s.files_present}/{s.files_expected}", state)
    return table

