"""``--strategy auto`` in annotation rounds (issue 20): values recorded at finish, learnt from at start."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden import io
from broaden.auto import strategy_values
from broaden.auto.allocation import FLOOR, arm_of
from broaden.cli import main
from broaden.rounds import Workspace, round_finish, round_import, round_start, status
from tests.test_rounds import fill_csv, make_world, new_workspace


def test_auto_rounds_record_values_and_follow_them(tmp_path, capsys):
    world = make_world(tmp_path)
    ws = new_workspace(world, strategy="auto", discrepancy="nominal", lookalike_threshold=0.3, seed_threshold=0.4)
    r1 = round_start(ws, world.pool1)
    assert r1.allocation is not None and set(r1.allocation["shares"]) == {"stat", "lsb-lt"}
    assert r1.allocation["shares"]["lsb-lt"] >= FLOOR - 1e-9
    assert set(r1.by_strategy) <= {"least_confident", "margin", "entropy", "lsb-lt"}
    on_disk = json.loads((ws / "rounds/0001/allocation.json").read_text())
    assert on_disk["shares"] == r1.allocation["shares"] and on_disk["diagnosis"]["verdict"]

    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    labels = {k: world.oracle[k] for k in map(str, batch.column("id").to_pylist())}
    round_import(ws, fill_csv(ws / "rounds/0001/export/batch.csv", tmp_path / "r1.csv", labels))
    round_finish(ws)

    # The recorded values equal strategy_values recomputed here from the same labels and the eval set.
    report = status(Workspace(ws))
    values = report["rounds"][0]["strategy_values"]
    w = Workspace(ws)
    with w.ledger() as ledger:
        labeled = w.labeled_table(ledger)
    ev = pq.read_table(world.eval)
    arms = [arm_of(s) if r == 1 and s else None for r, s in zip(labeled.column("round").to_pylist(),
                                                                 labeled.column("strategy").to_pylist())]
    ref = strategy_values(io.list_matrix(labeled.column("embedding")), io.labels_array(labeled.column("label")),
                          arms, io.list_matrix(ev.column("embedding")), io.labels_array(ev.column("label")),
                          num_classes=3, seed=w.config.seed,
                          fit=lambda X, y: w.new_classifier().fit(X, y, num_classes=3),
                          full_model=w.load_classifier(ws / "models/round-0001"))
    assert set(values) == set(ref) and all(values[a]["value"] == pytest.approx(ref[a]["value"]) for a in ref)
    assert all(values[a]["se"] == pytest.approx(ref[a]["se"]) and values[a]["n_removed"] == min(
        v["n"] for v in ref.values()) for a in ref)
    assert report["rounds"][0]["allocation"]["shares"] == r1.allocation["shares"]
    assert report["diagnosis"] is not None and report["diagnosis"]["n_recent"] == 40

    # Round 2 learns from round 1: the history it used is the recorded values.
    r2 = round_start(ws, world.pool2)
    assert any("round(s)" in reason for reason in r2.allocation["reasons"])  # Thompson, not the start rule
    assert sum(r2.allocation["shares"].values()) == pytest.approx(1.0)
    assert main(["status", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "measured value per strategy" in out and "(auto)" in out


def test_report_draws_the_auto_shares(tmp_path):
    from broaden.report import report

    world = make_world(tmp_path)
    ws = new_workspace(world, strategy="auto", discrepancy="nominal", lookalike_threshold=0.3, seed_threshold=0.4)
    round_start(ws, world.pool1)
    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    labels = {k: world.oracle[k] for k in map(str, batch.column("id").to_pylist())}
    round_import(ws, fill_csv(ws / "rounds/0001/export/batch.csv", tmp_path / "r1.csv", labels))
    round_finish(ws)
    report(ws, out=tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "--strategy auto: share of the budget per strategy" in html
    assert "Measured value per strategy" in html and "error clustering" in html


def test_rounds_take_in_memory_tables(tmp_path):
    """init and round start take DataFrames / Arrow tables (issue 19): the same batch as from the files."""
    from broaden.rounds import init

    pd = pytest.importorskip("pandas")
    world = make_world(tmp_path)
    by_path = new_workspace(world, name="paths")
    settings = {"class_names": ["sports", "tech", "politics"], "strategy": "entropy:0.5,random:0.5", "budget": 40,
                "classifier": {"hidden": [16], "max_epochs": 15}}
    mem = tmp_path / "mem"
    init(mem, settings, labeled=pq.read_table(world.labeled).to_pandas(), eval=pq.read_table(world.eval))
    cfg = Workspace(mem).config
    assert cfg.labeled == str((mem / "data/labeled.parquet").resolve()) and (mem / "data/eval.parquet").is_file()
    assert not list(tmp_path.glob(".mem.*"))  # the staging folder is gone
    a = round_start(by_path, world.pool1)
    b = round_start(mem, pq.read_table(world.pool1).to_pandas())
    assert b.pool.startswith(str(mem / "pools")) and a.by_strategy == b.by_strategy
    ids = lambda ws: pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()  # noqa: E731
    assert ids(by_path) == ids(mem)
    with pytest.raises(TypeError, match="cannot read"):
        init(tmp_path / "bad", settings, labeled=42)
    assert not (tmp_path / "bad").exists()
