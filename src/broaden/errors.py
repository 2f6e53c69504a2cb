"""Every exception type of broaden, in one module (imports nothing of ours).

The modules that raise them re-export the ones they own (``broaden.select.SelectionError`` is this
``SelectionError``), so either import works."""
from __future__ import annotations


class BroadenError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ScoredTableError(BroadenError, ValueError):
    """A scored table (DESIGN.md §5) is malformed; the message names the file, column and row."""


class DatasetError(BroadenError):
    """A dataset file is missing or does not match its published checksum."""


class ConfigError(BroadenError, ValueError):
    """A configuration file or mapping has an unknown key or a bad value; the message names it."""


class OutputError(BroadenError, OSError):
    """An output path cannot be written (a folder, under a file, no permission); the message names it."""


class SelectionError(BroadenError, ValueError):
    """Bad selection request: unknown strategy, bad mix, budget beyond the eligible pool, bad options."""


class KNNError(BroadenError, ValueError):
    """Bad kNN request: unknown index kind, unsupported metric, mismatched dimensions."""


class EngineError(BroadenError, ValueError):
    """Bad engine request: unknown engine name, Ray not installed, cluster unreachable."""


__all__ = ["BroadenError", "ConfigError", "DatasetError", "EngineError", "KNNError", "OutputError", "ScoredTableError",
           "SelectionError"]
