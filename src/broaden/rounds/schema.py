"""The ledger's SQLite schema, versioned with ``PRAGMA user_version`` and upgraded by ordered migrations.

A new ledger runs every migration from 1; an older one runs only those above its version, all in one
transaction, after a backup copy of the file has been written beside it. Never edit a shipped
migration: add the next one.

Version history
- v1: rounds, items (what was sent, with strategy / score / seed provenance), annotations (every vote).
- v2: imports (file digests, so re-importing a file changes nothing); the model and embedding version
  that scored each round's pool (kNN must never mix embedding versions); each vote remembers its import.
- v3: items.relabel: 1 when the round sent an already-labelled item again for another vote (``activelab``).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from broaden.errors import BroadenError


class LedgerError(BroadenError):
    """The ledger file is unreadable, too new for this broaden, or inconsistent."""


V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rounds (
    round       INTEGER PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('open', 'finished')),
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    pool        TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    budget      INTEGER NOT NULL,
    seed        INTEGER NOT NULL,
    metrics     TEXT
);
CREATE TABLE items (
    item_key        TEXT NOT NULL,
    round           INTEGER NOT NULL REFERENCES rounds(round),
    strategy        TEXT NOT NULL,
    score           REAL,
    rank            INTEGER NOT NULL,
    pred            INTEGER,
    seed_id         TEXT,
    similarity      REAL,
    lookalike_score REAL,
    PRIMARY KEY (item_key, round)
);
CREATE INDEX items_round ON items(round);
CREATE TABLE annotations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    item_key    TEXT NOT NULL,
    round       INTEGER NOT NULL,
    annotator   TEXT NOT NULL,
    label       INTEGER NOT NULL,
    source      TEXT NOT NULL,
    imported_at TEXT NOT NULL,
    UNIQUE (item_key, round, annotator, label),
    FOREIGN KEY (item_key, round) REFERENCES items(item_key, round)
);
CREATE INDEX annotations_item ON annotations(item_key);
"""

V2 = """
CREATE TABLE imports (
    digest      TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    format      TEXT NOT NULL,
    rows_ok     INTEGER NOT NULL,
    rows_bad    INTEGER NOT NULL,
    rows_new    INTEGER NOT NULL,
    imported_at TEXT NOT NULL
);
ALTER TABLE rounds ADD COLUMN model_id TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE rounds ADD COLUMN embedding_version TEXT NOT NULL DEFAULT 'unversioned';
ALTER TABLE annotations ADD COLUMN import_digest TEXT REFERENCES imports(digest);
"""

V3 = """
ALTER TABLE items ADD COLUMN relabel INTEGER NOT NULL DEFAULT 0;
"""

MIGRATIONS: tuple[str, ...] = (V1, V2, V3)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: Path | None = None, *, target: int = SCHEMA_VERSION,
            backup: Callable[[sqlite3.Connection, int], None] | None = None) -> int:
    """Bring the ledger to ``target``; returns the version it had before. One transaction for all steps."""
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise LedgerError(
            f"{path or 'ledger'}: schema version {current} is newer than this broaden supports "
            f"({SCHEMA_VERSION}); upgrade broaden"
        )
    if current >= target:
        return current
    if current > 0 and backup is not None:
        backup(conn, current)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(current + 1, target + 1):
            for statement in _statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
        # PRAGMA cannot take parameters; target is an int we control.
        conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT the open transaction first; split so every step stays inside it.
    return [s.strip() for s in script.split(";") if s.strip()]
