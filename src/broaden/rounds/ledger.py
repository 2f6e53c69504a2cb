"""The round ledger: an embedded SQLite database (WAL mode) of every item sent out and every label back.

Each mutation is one ``BEGIN IMMEDIATE`` … ``COMMIT`` transaction, so a process killed at any point leaves
either the whole change or none of it; SQLite's WAL recovery on the next open discards the uncommitted
tail. Items are addressed by a text key (``str(id)``) so integer and string ids share one table.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from broaden.rounds.schema import LedgerError, migrate

FAULT_ENV = "BROADEN_FAULT"
FAULT_FILE_ENV = "BROADEN_FAULT_FILE"


def fault_point(name: str) -> None:
    """Crash-test hook: when ``$BROADEN_FAULT`` names this point, announce it and wait to be killed.

    Tests start a command in a subprocess with the variable set, wait for the announcement file and
    SIGKILL the process there, exactly where a real crash would hurt most.
    """
    if os.environ.get(FAULT_ENV) != name:
        return
    marker = os.environ.get(FAULT_FILE_ENV)
    if marker:
        Path(marker).write_text(name)
    while True:  # pragma: no cover - only ever left by SIGKILL
        time.sleep(60)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ItemRecord:
    """One selected item as the ledger keeps it (``item_key`` is ``str(id)``)."""

    item_key: str
    strategy: str
    score: float | None
    rank: int
    pred: int | None = None
    seed_id: str | None = None
    similarity: float | None = None
    lookalike_score: float | None = None
    relabel: bool = False  # an item labelled before, sent again for another vote


@dataclass(frozen=True)
class Vote:
    """One validated label from one annotator for one item of an open round."""

    item_key: str
    round: int
    annotator: str
    label: int


class Ledger:
    """The workspace's SQLite ledger. Open with :meth:`open`; close (or use ``with``) when done."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    # ------------------------------------------------------------------------------ open / schema
    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False) -> Ledger:
        path = Path(path)
        if not create and not path.exists():
            raise LedgerError(f"{path}: no ledger here; run `broaden init` on the workspace first")
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=60)
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: not a readable SQLite ledger ({exc})") from exc
        if str(mode).lower() != "wal":
            raise LedgerError(f"{path}: could not switch the ledger to WAL mode (got {mode!r})")
        migrate(conn, path, backup=lambda c, v: _backup(c, path, v))
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken at BEGIN so readers never see half of it."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items())

    # ----------------------------------------------------------------------------------- rounds
    def next_round(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(round), 0) + 1 FROM rounds").fetchone()[0])

    def rounds(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM rounds ORDER BY round").fetchall()

    def round(self, number: int) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM rounds WHERE round = ?", (number,)).fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: there is no round {number}")
        return row

    def open_rounds(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT round FROM rounds WHERE status = 'open' ORDER BY round")]

    def add_round(self, *, round: int, pool: str, strategy: str, budget: int, seed: int, model_id: str,
                  embedding_version: str, items: Sequence[ItemRecord]) -> None:
        """Record a round and every item it sends out: all of them or, after any failure, none."""
        rows = [(it.item_key, round, it.strategy, it.score, it.rank, it.pred, it.seed_id, it.similarity,
                 it.lookalike_score, int(it.relabel)) for it in items]
        half = len(rows) // 2
        with self.transaction() as c:
            c.execute(
                "INSERT INTO rounds(round, status, created_at, pool, strategy, budget, seed, model_id, "
                "embedding_version) VALUES (?, 'open', ?, ?, ?, ?, ?, ?, ?)",
                (round, now(), pool, strategy, budget, seed, model_id, embedding_version),
            )
            insert = ("INSERT INTO items(item_key, round, strategy, score, rank, pred, seed_id, similarity, "
                      "lookalike_score, relabel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            c.executemany(insert, rows[:half])
            fault_point("round-start:transaction")
            c.executemany(insert, rows[half:])

    def finish_round(self, number: int, *, metrics: dict | None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE rounds SET status = 'finished', finished_at = ?, metrics = ? WHERE round = ?",
                      (now(), None if metrics is None else json.dumps(metrics), number))

    # ------------------------------------------------------------------------------------ items
    def items(self, round: int | None = None) -> list[sqlite3.Row]:
        if round is None:
            return self.conn.execute("SELECT * FROM items ORDER BY round, rank").fetchall()
        return self.conn.execute("SELECT * FROM items WHERE round = ? ORDER BY rank", (round,)).fetchall()

    def latest_round_of(self, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
        """For each key ever sent out: (its latest round, that round's status)."""
        return {key: max(found.items()) for key, found in self.rounds_of(keys).items()}

    def rounds_of(self, keys: Iterable[str]) -> dict[str, dict[int, str]]:
        """For each key ever sent out: {round it was sent in: that round's status}."""
        out: dict[str, dict[int, str]] = {}
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS lookup(item_key TEXT PRIMARY KEY)")
        self.conn.execute("DELETE FROM lookup")
        self.conn.executemany("INSERT OR IGNORE INTO lookup VALUES (?)", ((k,) for k in keys))
        for key, rnd, status in self.conn.execute(
            "SELECT i.item_key, i.round, r.status FROM items i JOIN lookup l USING (item_key) "
            "JOIN rounds r USING (round) ORDER BY i.round"
        ):
            out.setdefault(key, {})[rnd] = status
        self.conn.execute("DELETE FROM lookup")
        return out

    def blocked_keys(self) -> set[str]:
        """Keys that must never be selected again: in an open round, or labelled by anyone, ever (only a
        relabelling strategy sends a labelled item again, and only one not in an open round)."""
        rows = self.conn.execute(
            "SELECT item_key FROM items JOIN rounds USING (round) WHERE status = 'open' "
            "UNION SELECT item_key FROM annotations"
        )
        return {r[0] for r in rows}

    # ------------------------------------------------------------------------------ annotations
    def find_import(self, digest: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM imports WHERE digest = ?", (digest,)).fetchone()

    def add_import(self, *, digest: str, path: str, fmt: str, votes: Sequence[Vote], rows_bad: int) -> int:
        """Store the votes of one file and its digest in one transaction; returns how many votes changed.

        A vote identical to the annotator's latest one for that item changes nothing, so the same labels
        arriving in a differently named or formatted file are kept once. A vote identical to an *older*
        one (the annotator went back to an earlier label) becomes their latest again: the stored row is
        moved to the end of the sequence, since the table keeps one row per (item, round, annotator, label).
        """
        stamp = now()
        with self.transaction() as c:
            c.execute(
                "INSERT INTO imports(digest, path, format, rows_ok, rows_bad, rows_new, imported_at) "
                "VALUES (?, ?, ?, ?, ?, 0, ?)",
                (digest, path, fmt, len(votes), rows_bad, stamp),
            )
            before = self.conn.total_changes
            rows = [(v.item_key, v.round, v.annotator, v.label, path, stamp, digest) for v in votes]
            half = len(rows) // 2
            upsert = (
                "INSERT INTO annotations(item_key, round, annotator, label, source, imported_at, import_digest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(item_key, round, annotator, label) DO UPDATE SET "
                "id = (SELECT max(id) FROM annotations) + 1, source = excluded.source, "
                "imported_at = excluded.imported_at, import_digest = excluded.import_digest "
                "WHERE annotations.id < (SELECT max(a.id) FROM annotations a WHERE a.item_key = excluded.item_key "
                "AND a.round = excluded.round AND a.annotator = excluded.annotator)"
            )
            c.executemany(upsert, rows[:half])
            fault_point("round-import:transaction")
            c.executemany(upsert, rows[half:])
            new = self.conn.total_changes - before
            c.execute("UPDATE imports SET rows_new = ? WHERE digest = ?", (new, digest))
        return int(new)

    def open_keys(self) -> set[str]:
        """Keys of the items in an open round."""
        rows = self.conn.execute("SELECT item_key FROM items JOIN rounds USING (round) WHERE status = 'open'")
        return {r[0] for r in rows}

    def votes(self, round: int | None = None) -> list[sqlite3.Row]:
        """Each annotator's latest label per item (an annotator who changes their mind counts once)."""
        where = "" if round is None else "WHERE round = ?"
        args = () if round is None else (round,)
        return self.conn.execute(
            f"SELECT item_key, round, annotator, label FROM annotations WHERE id IN "
            f"(SELECT max(id) FROM annotations {where} GROUP BY item_key, round, annotator) "
            f"ORDER BY round, item_key, annotator", args
        ).fetchall()

    def counts(self) -> dict[str, int]:
        """Row counts per table (for status and for tests that check nothing was lost or doubled)."""
        return {t: int(self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("rounds", "items", "annotations", "imports")}


def _backup(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Copy the ledger (consistently, via SQLite's backup API) before migrating it."""
    target = path.with_name(f"{path.name}.v{version}.bak")
    tmp = target.with_name(target.name + ".tmp")
    dest = sqlite3.connect(tmp)
    try:
        conn.backup(dest)
    finally:
        dest.close()
    os.replace(tmp, target)

