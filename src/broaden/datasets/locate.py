"""Where datasets live: ``data_dir=`` / ``--data-dir``, else ``BROADEN_DATA_DIR``, else a user cache folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

DATA_DIR_ENV = "BROADEN_DATA_DIR"
CACHE_DIR_ENV = "BROADEN_CACHE_DIR"


def cache_dir() -> Path:
    """broaden's per-user cache: ``BROADEN_CACHE_DIR``, else the platform's cache location.

    Linux and other Unix: ``$XDG_CACHE_HOME/broaden`` (default ``~/.cache/broaden``); macOS:
    ``~/Library/Caches/broaden``; Windows: ``%LOCALAPPDATA%\\broaden\\Cache``.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "broaden" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "broaden"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "broaden"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: the explicit argument, else ``BROADEN_DATA_DIR``, else ``<cache>/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"


def describe_origin(data_dir: str | os.PathLike | None) -> str:
    """Which rule chose the data directory, for error messages that tell the user what to change."""
    if data_dir is not None:
        return "set by --data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return f"set by {DATA_DIR_ENV}"
    return f"default user cache folder; choose another with --data-dir or {DATA_DIR_ENV}"
