"""The ledger on its own: WAL mode, schema migration from v1, all-or-nothing writes, yields, formats."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from broaden.rounds import SCHEMA_VERSION, LedgerError, beta_yield
from broaden.rounds.formats import parse_annotations, parse_label
from broaden.rounds.ledger import ItemRecord, Ledger, Vote
from broaden.rounds.schema import migrate, schema_version


def _v1_ledger(path):
    """A ledger as broaden wrote it before schema v2, with a round, items and votes."""
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute("INSERT INTO rounds(round, status, created_at, pool, strategy, budget, seed) "
                 "VALUES (1, 'finished', '2024-01-01', 'p.parquet', 'entropy', 2, 0)")
    conn.execute("INSERT INTO rounds(round, status, created_at, pool, strategy, budget, seed) "
                 "VALUES (2, 'open', '2024-01-08', 'q.parquet', 'entropy', 1, 0)")
    conn.executemany("INSERT INTO items(item_key, round, strategy, score, rank, pred) VALUES (?, ?, ?, ?, ?, ?)",
                     [("a", 1, "entropy", 0.9, 1, 0), ("b", 1, "entropy", 0.8, 2, 1), ("c", 2, "entropy", 0.7, 1, 1)])
    conn.executemany("INSERT INTO annotations(item_key, round, annotator, label, source, imported_at) "
                     "VALUES (?, ?, ?, ?, 'old.csv', '2024-01-02')", [("a", 1, "x", 1), ("b", 1, "x", 1)])
    conn.close()


def test_migrates_a_v1_ledger_and_keeps_its_data(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _v1_ledger(path)
    with Ledger.open(path) as led:
        assert schema_version(led.conn) == SCHEMA_VERSION == 3
        assert led.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert led.counts() == {"rounds": 2, "items": 3, "annotations": 2, "imports": 0}
        r1 = led.round(1)
        assert (r1["model_id"], r1["embedding_version"], r1["status"]) == ("unknown", "unversioned", "finished")
        assert [v["label"] for v in led.votes()] == [1, 1]
        assert led.blocked_keys() == {"a", "b", "c"}
        assert [i["relabel"] for i in led.items()] == [0, 0, 0]  # v3: no old item was a relabel
        # The v2 features work on migrated data: a new import is recorded with its digest.
        new = led.add_import(digest="d1", path="new.csv", fmt="csv", votes=[Vote("c", 2, "y", 0)], rows_bad=0)
        assert new == 1 and led.find_import("d1")["rows_new"] == 1
    backup = tmp_path / "ledger.sqlite.v1.bak"
    with sqlite3.connect(backup) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 1
        assert old.execute("SELECT count(*) FROM annotations").fetchone()[0] == 2


def test_refuses_a_ledger_from_a_newer_broaden(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger.open(path, create=True).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="newer than this broaden supports"):
        Ledger.open(path)


def test_not_a_ledger(tmp_path):
    junk = tmp_path / "ledger.sqlite"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a readable SQLite ledger"):
        Ledger.open(junk)


def test_round_is_recorded_whole_or_not_at_all(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite", create=True) as led:
        items = [ItemRecord("a", "entropy", 0.5, 1), ItemRecord("a", "entropy", 0.4, 2)]  # duplicate key
        with pytest.raises(sqlite3.IntegrityError):
            led.add_round(round=1, pool="p", strategy="entropy", budget=2, seed=0, model_id="m",
                          embedding_version="v", items=items)
        assert led.counts()["rounds"] == 0 and led.counts()["items"] == 0


def test_beta_yield_against_monte_carlo():
    rng = np.random.default_rng(0)
    for bad, n in ((0, 10), (7, 20), (45, 50)):
        y = beta_yield(bad, n)
        assert y.mean == pytest.approx((bad + 1) / (n + 2))
        draws = rng.beta(bad + 1, n - bad + 1, 400_000)
        lo, hi = np.quantile(draws, [0.05, 0.95])
        assert (y.low, y.high) == (pytest.approx(lo, abs=3e-3), pytest.approx(hi, abs=3e-3))


@pytest.mark.parametrize("value, expected", [(2, 2), ("2", 2), (" tech ", 1), (1.0, 1), ("sports", 0)])
def test_parse_label(value, expected):
    assert parse_label(value, ["sports", "tech", "politics"]) == expected


@pytest.mark.parametrize("value", [3, -1, "3", "weather", True, 1.5, [1], "\u0661", "\uff12", "\u00b2", "9" * 5000])
def test_parse_label_rejects(value):
    with pytest.raises(ValueError):
        parse_label(value, ["sports", "tech", "politics"])


def test_csv_rows_are_numbered_by_line_and_blank_labels_skipped(tmp_path):
    text = 'id,label,text\n1,0,"two\nlines"\n2,,x\n,1,x\n3,9,x\n'
    parsed = parse_annotations(tmp_path / "f.csv", text, class_names=["a", "b"])
    assert [(v.where, v.item_id, v.label) for v in parsed.votes] == [("line 2", "1", 0)]
    assert parsed.unlabelled == 1
    assert [(b.where, b.reason) for b in parsed.bad] == [
        ("line 5", "no 'id'"), ("line 6", "id '3': label 9 is outside 0..1")]


def test_csv_without_label_column_is_one_bad_header(tmp_path):
    parsed = parse_annotations(tmp_path / "f.csv", "id,class\n1,0\n", class_names=["a", "b"])
    assert parsed.votes == [] and parsed.bad[0].where == "header"
