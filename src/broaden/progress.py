"""Rich progress bars on stderr for long work (imports nothing of ours, so every layer can use it)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def track(description: str, total: int | None, enabled: bool = True, *,
          transient: bool = False) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n=1)``; draws a bar only when enabled and stderr is a terminal.

    ``transient`` bars disappear when done (pool scans); others stay as a record (training epochs).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, transient=transient,
                   disable=not (enabled and console.is_terminal))
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
