"""Annotation rounds in production (Algorithm 1 with people as the oracle): workspace, ledger, formats."""
from __future__ import annotations

from broaden.rounds.annotate import ImportRejected, ImportReport
from broaden.rounds.api import init, round_finish, round_import, round_pull, round_push, round_start, status
from broaden.rounds.config import ConfigError, WorkspaceConfig, load_config
from broaden.rounds.finish import RoundFinish
from broaden.rounds.ledger import Ledger
from broaden.rounds.resolve import Consensus, Resolution, Yield, beta_yield, resolve_crowdlab, resolve_votes
from broaden.rounds.schema import SCHEMA_VERSION, LedgerError
from broaden.rounds.start import RoundStart
from broaden.rounds.workspace import Workspace, WorkspaceError

__all__ = [
    "SCHEMA_VERSION", "ConfigError", "Consensus", "ImportRejected", "ImportReport", "Ledger", "LedgerError",
    "Resolution", "RoundFinish", "RoundStart", "Workspace", "WorkspaceConfig", "WorkspaceError", "Yield",
    "beta_yield", "init", "load_config", "resolve_crowdlab", "resolve_votes", "round_finish", "round_import",
    "round_pull", "round_push", "round_start", "status",
]
