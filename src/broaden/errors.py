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



class SeedError(BroadenError, ValueError):
    """Bad seed request (threshold, caps, discrepancy kind) or a labelled table without labels."""


class LookalikeError(BroadenError, ValueError):
    """The Lookalike Threshold cannot be fitted or loaded (one class only, bad file, wrong dimension)."""


class CleaningError(BroadenError, ValueError):
    """Bad input to label cleaning (shapes, label range, refusing an evaluation split)."""


class ClassifierError(BroadenError):
    """Bad training input or an unreadable saved classifier."""


# Exception types still defined beside the code that raises them (simulate, report, models, rounds) are
# exported from here too, loaded on first use so that this module keeps importing nothing of ours.
_ELSEWHERE = {
    "GroupError": "broaden.simulate.groups", "OracleError": "broaden.simulate.oracle",
    "SimulationError": "broaden.simulate.runner", "ScenarioError": "broaden.simulate.scenario",
    "ReportError": "broaden.report.sources.common", "AudioError": "broaden.models.audio",
    "ModelPathError": "broaden.models.text", "FrameError": "broaden.models.visual", "ItemError": "broaden.models.train",
    "LabelStudioError": "broaden.rounds.labelstudio", "ImportRejected": "broaden.rounds.annotate",
    "LedgerError": "broaden.rounds.schema", "WorkspaceError": "broaden.rounds.workspace",
    "EvaluationLeakError": "broaden.rounds.workspace", "MissingProbabilities": "broaden.rounds.resolve",
}


def __getattr__(name: str):
    if name not in _ELSEWHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_ELSEWHERE[name]), name)


__all__ = sorted(["BroadenError", "ClassifierError", "CleaningError", "ConfigError", "DatasetError", "EngineError",
                  "KNNError", "LookalikeError", "OutputError", "ScoredTableError", "SeedError", "SelectionError",
                  *_ELSEWHERE])
