"""broaden: choose what to annotate next and train the classifier that benefits from it.

The public API mirrors the CLI: every ``broaden <command>`` has a Python function of the same name,
importable from here — ``broaden.select``, ``broaden.lsb``, ``broaden.clean``, ``broaden.evaluate``,
``broaden.train``, ``broaden.score``, ``broaden.simulate``, ``broaden.demo``, ``broaden.report``,
``broaden.round_start`` … — together with :class:`Columns`, the readers and writers of scored tables and
every exception type (:mod:`broaden.errors`). Everything loads on first use, so ``import broaden`` stays
light; heavy dependencies (torch, faiss, cleanlab, Ray) load only when a command needs them.
(``select``, ``lsb``, ``simulate`` and ``report`` are packages that are callable as their command.)
"""
from __future__ import annotations

from broaden import errors as _errors
from broaden._lazy import lazy_exports

__version__ = "0.1.0"

_COMMANDS = {
    "evaluate": "broaden.evaluation",
    "select": "broaden.select",
    "lsb": "broaden.lsb",
    "seed_bad_cases": "broaden.lsb.seeds",
    "clean": "broaden.select.cleaning",
    "train": "broaden.models.train",
    "score": "broaden.models.score",
    "simulate": "broaden.simulate",
    "demo": "broaden.simulate.runner",
    "report": "broaden.report",
    "diagnose": "broaden.auto.diagnosis",
    **{name: "broaden.rounds.api" for name in ("round_start", "round_finish", "round_import", "round_push",
                                               "round_pull")},
}
_DATA = {name: "broaden.io" for name in ("Columns", "as_scored", "load_scored", "iter_batches", "make_scored_table",
                                         "read_scored", "read_table", "write_table")}
_DATA["get_engine"] = "broaden.engines"
_ERRORS = {name: "broaden.errors" for name in _errors.__all__}

__getattr__ = lazy_exports(__name__, {**_COMMANDS, **_DATA, **_ERRORS})

__all__ = sorted([*_COMMANDS, *_DATA, *_ERRORS])
