"""Crash safety: a `broaden` process SIGKILLed mid-command leaves a ledger the next command accepts,
with no item lost or recorded twice."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.test_rounds import fill_csv, make_world, new_workspace

from broaden.rounds import round_finish, round_import, round_start, status
from broaden.rounds.ledger import FAULT_ENV, FAULT_FILE_ENV, Ledger


def _spawn(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "broaden", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_at(point: str, args, tmp_path) -> None:
    """Run a command until it reaches fault point ``point`` (inside its transaction), then SIGKILL it."""
    marker = tmp_path / f"{point.replace(':', '_')}.reached"
    proc = _spawn(args, {FAULT_ENV: point, FAULT_FILE_ENV: str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"command ended ({proc.returncode}) before reaching {point}: {err.decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"command never reached {point}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def check_consistent(ws) -> dict:
    """Invariants that must hold after any crash: every recorded round has its batch file with exactly
    the ledger's ids, no item is in two open rounds, and every vote belongs to a recorded item."""
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert led.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for r in led.rounds():
            keys = [i["item_key"] for i in led.items(r["round"])]
            assert len(keys) == r["budget"] == len(set(keys))
            batch = pq.read_table(ws / f"rounds/{r['round']:04d}/batch.parquet")
            assert sorted(map(str, batch.column("id").to_pylist())) == sorted(keys)
        open_keys = [i["item_key"] for i in led.items() if led.round(i["round"])["status"] == "open"]
        assert len(open_keys) == len(set(open_keys))
        orphans = led.conn.execute("SELECT count(*) FROM annotations a LEFT JOIN items i "
                                   "USING (item_key, round) WHERE i.item_key IS NULL").fetchone()[0]
        assert orphans == 0
        return led.counts()


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


def test_kill_inside_round_start_transaction(world, tmp_path):
    ws = new_workspace(world)
    kill_at("round-start:transaction", ["round", "start", ws, "--pool", world.pool1], tmp_path)
    assert check_consistent(ws)["items"] == 0  # half the items were inserted, none survived
    r = round_start(ws, world.pool1)
    assert r.round == 1 and check_consistent(ws)["items"] == 40
    assert (ws / "rounds/0001/export/tasks.json").exists()


def test_kill_after_round_start_commit_rewrites_exports(world, tmp_path):
    ws = new_workspace(world)
    kill_at("round-start:committed", ["round", "start", ws, "--pool", world.pool1], tmp_path)
    assert check_consistent(ws)["items"] == 40
    assert not (ws / "rounds/0001/export/batch.csv").exists()
    # The next command repairs the annotator files before doing its own work.
    ids = [str(i) for i in pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()]
    labels = world.root / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{k},{world.oracle[k]}\n" for k in ids))
    assert round_import(ws, labels).new == 40
    assert (ws / "rounds/0001/export/batch.csv").read_text().count("\n") == 41
    assert check_consistent(ws) == {"rounds": 1, "items": 40, "annotations": 40, "imports": 1}


def test_kill_inside_round_import_transaction(world, tmp_path):
    ws = new_workspace(world)
    round_start(ws, world.pool1)
    ids = [str(i) for i in pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()]
    f = fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "a.csv", {k: world.oracle[k] for k in ids})
    kill_at("round-import:transaction", ["round", "import", ws, f], tmp_path)
    assert check_consistent(ws) == {"rounds": 1, "items": 40, "annotations": 0, "imports": 0}
    rep = round_import(ws, f)
    assert rep.new == 40 and not rep.already_imported
    assert round_import(ws, f).already_imported
    assert check_consistent(ws)["annotations"] == 40


def test_kill_during_finish_keeps_round_open(world, tmp_path):
    ws = new_workspace(world)
    round_start(ws, world.pool1)
    ids = [str(i) for i in pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()]
    round_import(ws, fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "a.csv",
                              {k: world.oracle[k] for k in ids}))
    kill_at("round-finish:model-saved", ["round", "finish", ws], tmp_path)
    assert status(ws)["rounds"][0]["status"] == "open"
    assert round_finish(ws).trained_on == 100
    assert status(ws)["rounds"][0]["status"] == "finished"


@pytest.mark.slow
def test_kill_round_start_at_random_times(world, tmp_path):
    """Kill `round start` at random moments; after each kill the ledger is consistent and the next
    start records exactly one complete batch that overlaps no open batch."""
    ws = new_workspace(world)
    rng = np.random.default_rng(7)
    for _ in range(6):
        proc = _spawn(["round", "start", ws, "--pool", world.pool1, "--budget", "10"])
        time.sleep(float(rng.uniform(0.3, 2.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_consistent(ws)
    before = check_consistent(ws)
    r = round_start(ws, world.pool1, budget=10)
    after = check_consistent(ws)
    assert (after["rounds"], after["items"]) == (before["rounds"] + 1, before["items"] + 10)
    assert r.round == after["rounds"]


def test_concurrent_round_starts_never_share_an_item(world):
    ws = new_workspace(world)
    procs = [_spawn(["round", "start", ws, "--pool", world.pool1, "--budget", "25"]) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    counts = check_consistent(ws)  # includes: no item in two open rounds
    assert (counts["rounds"], counts["items"]) == (2, 50)
