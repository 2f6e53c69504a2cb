"""broaden: choose what to annotate next and train the classifier that benefits from it.

The public API mirrors the CLI: every ``broaden <command>`` has a Python function of the same name, in
the module that owns it (``broaden.select.select``, ``broaden.lsb.lsb``, ``broaden.simulate.simulate``,
…); the most used names are re-exported here. Heavy dependencies (torch, faiss) load only when used.
"""
from __future__ import annotations

from broaden.errors import BroadenError, DatasetError, ScoredTableError
from broaden.evaluation import evaluate
from broaden.io import Columns, as_scored, load_scored, iter_batches, make_scored_table, read_scored, read_table, write_table

__version__ = "0.1.0"

__all__ = [
    "BroadenError",
    "Columns",
    "DatasetError",
    "ScoredTableError",
    "as_scored",
    "evaluate",
    "iter_batches",
    "load_scored",
    "make_scored_table",
    "read_scored",
    "read_table",
    "write_table",
]
