"""Annotation rounds end to end: two-round cycle, import rules, conflicts, versions, status yields."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden import io
from broaden.rounds import (
    ImportRejected, Workspace, WorkspaceError, init, round_finish, round_import, round_start, status,
)
from broaden.rounds.config import ConfigError
from broaden.rounds.ledger import Ledger

CLASSES = ["sports", "tech", "politics"]
DIM = 8


@dataclass
class World:
    """Generated data with an oracle: every item's true label is known to the test, not to the workspace."""

    root: Path
    oracle: dict[str, int]
    pool1: Path
    pool2: Path
    labeled: Path
    eval: Path


def _items(rng, ids, centers, *, probs: bool, version: str | None = None, text: bool = True):
    n = len(ids)
    y = rng.integers(0, len(CLASSES), n)
    emb = centers[y] + rng.normal(0, 1.3, (n, DIM))
    extra = {}
    if text:
        extra = {"text": [f"headline {i}" for i in ids], "image_path": [f"/media/{i}.jpg" for i in ids]}
    if version is not None:
        extra["embedding_version"] = [version] * n
    p = None
    if probs:  # a fixed, imperfect snapshot model: softmax of a scaled linear map
        logits = 0.6 * emb @ centers.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
    return io.make_scored_table(np.asarray(ids), p, emb.astype(np.float32), y, extra=extra), y


def make_world(root: Path, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (len(CLASSES), DIM))
    oracle: dict[str, int] = {}
    labeled, _ = _items(rng, list(range(1, 61)), centers, probs=True, version="v1", text=False)
    ev, _ = _items(rng, list(range(100, 250)), centers, probs=False, version="v1", text=False)
    pool1, y1 = _items(rng, list(range(1000, 1300)), centers, probs=True, version="v1")
    oracle.update({str(i): int(v) for i, v in zip(range(1000, 1300), y1)})
    # The second week's pool re-collects half of the first (history must survive) plus new items,
    # and arrives embedded but not scored.
    new2, y2 = _items(rng, list(range(2000, 2150)), centers, probs=False, version="v1")
    oracle.update({str(i): int(v) for i, v in zip(range(2000, 2150), y2)})
    old = pool1.slice(150, 150).drop_columns(["probs"])
    pool2 = pa.concat_tables([old.select(new2.column_names), new2])
    paths = {}
    for name, table in (("pool1", pool1.drop_columns(["label"])), ("pool2", pool2.drop_columns(["label"])),
                        ("labeled", labeled), ("eval", ev)):
        paths[name] = io.write_table(table, root / "data" / f"{name}.parquet")
    return World(root, oracle, paths["pool1"], paths["pool2"], paths["labeled"], paths["eval"])


def fill_csv(src: Path, dst: Path, labels: dict[str, int | str], annotator: str | None = None) -> Path:
    """What an annotator does with batch.csv: fill the label column (and their name)."""
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["id"] in labels:
            value = labels[r["id"]]
            r["label"] = CLASSES[value] if isinstance(value, int) and annotator == "by-name" else value
            r["annotator"] = annotator or ""
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst


@pytest.fixture
def world(tmp_path) -> World:
    return make_world(tmp_path)


def new_workspace(world: World, name: str = "ws", **settings) -> Path:
    base = {"class_names": CLASSES, "labeled": str(world.labeled), "eval": str(world.eval),
            "strategy": "entropy:0.5,random:0.5", "budget": 40, "classifier": {"hidden": [16], "max_epochs": 15}}
    init(world.root / name, base | settings)
    return world.root / name


def _entropy(p):
    return -(p * np.log(p)).sum(1)


# ------------------------------------------------------------------------------------------ cycle
def test_two_round_cycle(world):
    ws = new_workspace(world)
    r1 = round_start(ws, world.pool1)
    assert (r1.round, r1.selected, r1.by_strategy) == (1, 40, {"entropy": 20, "random": 20})

    # The entropy half is the pool's top-20 by entropy, computed here independently with numpy.
    pool = pq.read_table(world.pool1)
    ent = _entropy(io.list_matrix(pool.column("probs"), dtype=np.float64))
    ids = np.asarray(pool.column("id"))
    expected = set(ids[np.lexsort((ids, -ent))[:20]].tolist())
    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    got = {i for i, s in zip(batch.column("id").to_pylist(), batch.column("strategy").to_pylist()) if s == "entropy"}
    assert got == expected

    export = ws / "rounds/0001/export"
    assert {p.name for p in export.iterdir()} == {"batch.csv", "batch.jsonl", "tasks.json", "labeling_config.xml"}
    labels1 = {k: world.oracle[k] for k in map(str, batch.column("id").to_pylist())}
    rep = round_import(ws, fill_csv(export / "batch.csv", world.root / "r1.csv", labels1))
    assert (rep.new, rep.bad, rep.format) == (40, [], "csv")

    f1 = round_finish(ws)
    assert f1.trained_on == 60 + 40
    # The recorded accuracy is what the saved model scores on the eval set, recomputed here.
    from broaden.models.classifier import EmbeddingClassifier

    clf = EmbeddingClassifier.load(ws / "models/round-0001")
    ev = pq.read_table(world.eval)
    pred = clf.predict_proba(io.list_matrix(ev.column("embedding"))).argmax(1)
    assert f1.metrics["accuracy"] == pytest.approx(float((pred == np.asarray(ev.column("label"))).mean()))
    assert f1.metrics["n"] == 150

    # Round 2: an unscored pool is scored by round 1's classifier; nothing from round 1 comes back.
    r2 = round_start(ws, world.pool2)
    assert r2.scored_pool is not None and r2.model_id.startswith("round-0001@")
    scored = pq.read_table(r2.scored_pool)
    np.testing.assert_allclose(io.list_matrix(scored.column("probs")),
                               clf.predict_proba(io.list_matrix(scored.column("embedding"))), rtol=1e-5, atol=1e-6)
    batch2 = pq.read_table(ws / "rounds/0002/batch.parquet")
    ids2 = set(map(str, batch2.column("id").to_pylist()))
    assert len(ids2) == 40 and not ids2 & set(labels1)
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert [(r["round"], r["status"]) for r in led.rounds()] == [(1, "finished"), (2, "open")]
        assert led.counts()["items"] == 80

    labels2 = {k: world.oracle[k] for k in ids2}
    round_import(ws, fill_csv(ws / "rounds/0002/export/batch.csv", world.root / "r2.csv", labels2, "by-name"))
    f2 = round_finish(ws)
    assert f2.trained_on == 60 + 80

    report = status(ws)
    assert [(r["round"], r["selected"], r["labelled"], r["pending"]) for r in report["rounds"]] == \
        [(1, 40, 40, 0), (2, 40, 40, 0)]
    assert report["rounds"][1]["metrics"]["accuracy"] == pytest.approx(f2.metrics["accuracy"])
    # Yield per strategy: bad = oracle label differs from the selecting model's argmax, by hand.
    for name in ("entropy", "random"):
        n = bad = 0
        for rnd, b in ((1, batch), (2, batch2)):
            probs = io.list_matrix(b.column("probs"))
            for i, s, p in zip(b.column("id").to_pylist(), b.column("strategy").to_pylist(), probs):
                if s == name:
                    n += 1
                    bad += int(world.oracle[str(i)] != int(p.argmax()))
        y = report["strategies"][name]
        assert (y["labelled"], y["bad"]) == (n, bad)
        assert y["mean"] == pytest.approx((bad + 1) / (n + 2))


def test_cli_cycle_and_status(world, capsys):
    from broaden.cli import main

    ws = world.root / "cli-ws"
    assert main(["init", str(ws), "--classes", ",".join(CLASSES), "--pool", str(world.pool1),
                 "--labeled", str(world.labeled), "--strategy", "margin", "--budget", "10"]) == 0
    assert main(["round", "start", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "round 1: 10 items selected (margin 10)" in out
    assert main(["status", str(ws), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds"][0]["pending"] == 10
    assert main(["status", str(ws)]) == 0
    assert "bad-case yield" in capsys.readouterr().out
    assert main(["round", "finish", str(ws)]) == 2  # pending items: a one-line error, not a traceback
    assert "--allow-pending" in capsys.readouterr().err


def test_lsb_mix_records_seed_provenance(world):
    ws = new_workspace(world, strategy="entropy:0.5,lsb-lt:0.5", discrepancy="nominal", lookalike_threshold=0.3)
    r = round_start(ws, world.pool1)
    assert r.by_strategy == {"entropy": 20, "lsb-lt": 20}
    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    lab = pq.read_table(world.labeled)
    seed_emb = dict(zip(map(str, lab.column("id").to_pylist()), io.list_matrix(lab.column("embedding"))))
    rows = [r for r in batch.to_pylist() if r["strategy"] == "lsb-lt"]
    with Ledger.open(ws / "ledger.sqlite") as led:
        ledger_seed = {i["item_key"]: (i["seed_id"], i["similarity"], i["lookalike_score"]) for i in led.items(1)}
    for row in rows:
        s = seed_emb[str(row["seed_id"])]
        e = np.asarray(row["embedding"])
        assert row["similarity"] == pytest.approx(e @ s / np.linalg.norm(e) / np.linalg.norm(s), abs=1e-5)
        # lsb-lt ranks by the lookalike score: the selector's score and the provenance agree.
        assert row["lookalike_score"] == pytest.approx(row["score"]) and row["lookalike_score"] > 0.3
        assert ledger_seed[str(row["id"])] == (str(row["seed_id"]), pytest.approx(row["similarity"]),
                                               pytest.approx(row["lookalike_score"]))
    tasks = json.loads((ws / "rounds/0001/export/tasks.json").read_text())
    meta = {t["data"]["item_id"]: t["meta"] for t in tasks}
    assert all(str(meta[r["id"]]["seed_id"]) == str(r["seed_id"]) for r in rows)
    assert all(m["seed_id"] is None for m in meta.values() if m["strategy"] == "entropy")


# ----------------------------------------------------------------------------------------- import
@pytest.fixture
def started(world):
    ws = new_workspace(world)
    round_start(ws, world.pool1)
    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    return ws, [str(i) for i in batch.column("id").to_pylist()]


def _counts(ws):
    with Ledger.open(ws / "ledger.sqlite") as led:
        return led.counts()


def test_reimport_changes_nothing(world, started):
    ws, ids = started
    f = fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "a.csv", {k: world.oracle[k] for k in ids})
    first = round_import(ws, f)
    before = _counts(ws)
    again = round_import(ws, f)
    renamed = round_import(ws, shutil.copy(f, world.root / "renamed.csv"))
    assert first.new == 40 and again.already_imported and renamed.already_imported
    # The same votes in another format are a different file but not new votes.
    jl = world.root / "same.jsonl"
    jl.write_text("".join(json.dumps({"id": int(k), "label": CLASSES[world.oracle[k]]}) + "\n" for k in ids))
    same = round_import(ws, jl)
    assert (same.new, same.duplicates) == (0, 40)
    after = _counts(ws)
    assert after["annotations"] == before["annotations"] == 40
    assert after["imports"] == before["imports"] + 1


def _mixed_file(world, ids, finished_id=None) -> Path:
    lines = [
        {"id": ids[0], "label": 0},
        {"id": ids[1], "label": "tech"},
        {"id": "no-such-item", "label": 1},
        {"id": ids[2], "label": 7},
        {"id": ids[3], "label": "weather"},
        {"id": ids[4], "label": None},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + "{not json\n"
    path = world.root / "mixed.jsonl"
    path.write_text(text)
    return path


def test_strict_imports_nothing_lenient_imports_good_rows(world, started):
    ws, ids = started
    path = _mixed_file(world, ids)
    with pytest.raises(ImportRejected) as err:
        round_import(ws, path, strict=True)
    assert "4 bad row(s)" in str(err.value)
    assert _counts(ws)["annotations"] == 0 and _counts(ws)["imports"] == 0

    rep = round_import(ws, path)
    assert (rep.new, rep.unlabelled) == (2, 1)
    reasons = {b.where: b.reason for b in rep.bad}
    assert set(reasons) == {"line 3", "line 4", "line 5", "line 7"}
    assert "never sent out" in reasons["line 3"]
    assert "outside 0..2" in reasons["line 4"]
    assert "weather" in reasons["line 5"] and "sports, tech, politics" in reasons["line 5"]
    assert "not valid JSON" in reasons["line 7"]


def test_labels_for_finished_round_are_rejected(world, started):
    ws, ids = started
    round_import(ws, fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "a.csv",
                              {k: world.oracle[k] for k in ids}))
    round_finish(ws)
    late = world.root / "late.csv"
    late.write_text(f"id,label\n{ids[0]},1\n")
    with pytest.raises(ImportRejected, match="round 1, which is finished"):  # stored nothing: an error
        round_import(ws, late)


def test_conflicts_majority_and_ties(world, started):
    ws, ids = started
    a, b, c = ids[:3]
    rows = [(a, "ann1", 0), (a, "ann2", 0), (a, "ann3", 1),  # 2:1 -> 0
            (b, "ann1", 0), (b, "ann2", 2),                   # 1:1 -> tie
            (c, "ann1", 1), (c, "ann1", 2)]                   # one annotator changed their mind -> 2
    path = world.root / "votes.csv"
    path.write_text("id,annotator,label\n" + "".join(f"{i},{n},{lab}\n" for i, n, lab in rows))
    round_import(ws, path)
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert led.counts()["annotations"] == 7  # every vote is kept
        from broaden.rounds import resolve_votes

        res = resolve_votes(led.votes())
    assert res[(a, 1)].label == 0 and res[(a, 1)].votes == {0: 2, 1: 1}
    assert res[(b, 1)].label is None and res[(b, 1)].tie
    assert res[(c, 1)].label == 2 and res[(c, 1)].votes == {2: 1}
    r = status(ws)["rounds"][0]
    assert (r["labelled"], r["tied"], r["pending"]) == (2, 1, 37)
    # status names the open round's tied items (with their votes per class) and its pending ones.
    assert r["tied_items"] == [{"id": b, "votes": {CLASSES[0]: 1, CLASSES[2]: 1}}]
    assert len(r["pending_items"]) == 37 and not {a, b, c} & set(r["pending_items"])
    # Tied and labelled items are never selected again; a finish needs --allow-pending here, and says which.
    with pytest.raises(WorkspaceError, match=rf"37 without a label \('.*and 32 more\) and 1 tied \({b!r} "
                       rf"\({CLASSES[0]} 1, {CLASSES[2]} 1\)\)"):
        round_finish(ws)
    round_finish(ws, allow_pending=True)
    r2 = round_start(ws, world.pool1)
    again = set(map(str, pq.read_table(ws / "rounds/0002/batch.parquet").column("id").to_pylist()))
    assert r2.selected == 40 and not again & {a, b, c}
    # Items left pending in round 1 may come back; they keep their round-1 history and take new labels.
    back = sorted(again & set(ids))
    assert back
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert [i["round"] for i in led.items() if i["item_key"] == back[0]] == [1, 2]
    late = world.root / "late.csv"
    late.write_text(f"id,label\n{back[0]},1\n")
    assert round_import(ws, late).new == 1
    assert status(ws)["rounds"][1]["labelled"] == 1


def test_annotator_going_back_to_an_earlier_label_counts_the_latest(world, started):
    ws, ids = started
    item = ids[0]
    for n, label in enumerate([1, 2, 1, 1]):  # files one after another; the last repeats the latest vote
        path = world.root / f"alice-{n}.csv"
        path.write_text(f"id,annotator,label\n{item},alice,{label}\n" + "\n" * n)  # distinct bytes per file
        new = round_import(ws, path).new
        assert new == (0 if n == 3 else 1), n
    with Ledger.open(ws / "ledger.sqlite") as led:
        from broaden.rounds import resolve_votes

        assert resolve_votes(led.votes())[(item, 1)].label == 1
        assert led.counts()["annotations"] == 2  # one row per distinct (annotator, label): both kept
    later = world.root / "bob.csv"  # a later vote still gets a fresh row
    later.write_text(f"id,annotator,label\n{item},bob,0\n")
    assert round_import(ws, later).new == 1


def test_open_round_items_are_not_selected_again(world, started):
    ws, ids = started
    round_start(ws, world.pool1)  # a second open round over the same pool
    again = set(map(str, pq.read_table(ws / "rounds/0002/batch.parquet").column("id").to_pylist()))
    assert len(again) == 40 and not again & set(ids)


# ---------------------------------------------------------------------------------- label studio
def test_label_studio_round_trip(world, started):
    import xml.etree.ElementTree as ET

    ws, ids = started
    export = ws / "rounds/0001/export"
    tasks = json.loads((export / "tasks.json").read_text())
    assert len(tasks) == 40
    t0 = tasks[0]
    assert set(t0) == {"data", "meta", "predictions"}
    assert {"item_id", "text", "image_path"} <= set(t0["data"])
    # Provenance as data fields (Label Studio shows them as Data Manager columns), and in meta as before.
    assert {"broaden_strategy", "broaden_score", "broaden_rank", "broaden_round"} <= set(t0["data"])
    assert set(t0["data"]) - {"item_id", "text", "image_path"} == {"broaden_" + k for k in t0["meta"]}
    assert {"strategy", "score", "rank", "round"} <= set(t0["meta"])
    (pred,) = t0["predictions"]
    assert pred["model_version"] and 0 < pred["score"] <= 1
    assert pred["result"][0]["value"]["choices"][0] in CLASSES and pred["result"][0]["to_name"] == "image_path"
    config = ET.fromstring((export / "labeling_config.xml").read_text())
    assert [c.get("value") for c in config.iter("Choice")] == CLASSES
    assert {e.tag for e in config} >= {"Text", "Image", "Choices"}

    # What Label Studio exports after annotation (its documented JSON): tasks gain an internal id and
    # annotations[].result[].value.choices; one annotation is cancelled and must be ignored.
    exported = []
    for n, task in enumerate(tasks, start=1):
        key = str(task["data"]["item_id"])
        choice = CLASSES[world.oracle[key]]
        exported.append(task | {"id": 500 + n, "annotations": [
            {"id": n, "completed_by": {"id": 7, "email": "ann@example.com"}, "was_cancelled": False,
             "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                         "value": {"choices": [choice]}}]},
            {"id": 1000 + n, "completed_by": 9, "was_cancelled": True,
             "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                         "value": {"choices": [CLASSES[(world.oracle[key] + 1) % 3]]}}]},
        ]})
    path = world.root / "project-1-export.json"
    path.write_text(json.dumps(exported))
    rep = round_import(ws, path)
    assert (rep.format, rep.new, rep.bad) == ("label-studio", 40, [])
    with Ledger.open(ws / "ledger.sqlite") as led:
        votes = {(v["item_key"], v["annotator"]): v["label"] for v in led.votes()}
    assert votes == {(k, "label-studio:ann@example.com"): world.oracle[k] for k in ids}


def test_label_studio_bad_annotations_are_reported(world, started):
    ws, ids = started
    export = [
        {"id": 1, "data": {"id": int(ids[0])}, "annotations": [
            {"result": [{"type": "choices", "value": {"choices": ["tech", "sports"]}}], "completed_by": 1}]},
        {"id": 2, "data": {"text": "no id"}, "annotations": []},
        {"id": 3, "data": {"id": int(ids[1])}, "annotations": [
            {"result": [{"type": "choices", "value": {"choices": ["tech"]}}], "completed_by": 1}]},
    ]
    path = world.root / "ls.json"
    path.write_text(json.dumps(export))
    rep = round_import(ws, path)
    assert rep.new == 1
    assert [b.where.split(" ")[:2] for b in rep.bad] == [["task", "1"], ["task", "2"]]
    assert "exactly one chosen class, found 2" in rep.bad[0].reason


# --------------------------------------------------------------------------- versions and config
def test_pool_without_probs_or_embedding_says_what_to_run(world):
    ws = new_workspace(world)
    bare = io.write_table(pq.read_table(world.pool1).select(["id", "text"]), world.root / "bare.parquet")
    with pytest.raises(WorkspaceError, match="broaden score"):
        round_start(ws, bare)


def test_pool_without_embedding_is_refused_at_start(world):
    # finish trains on embeddings: refusing at finish would waste the annotators' work
    ws = new_workspace(world)
    no_emb = io.write_table(pq.read_table(world.pool1).drop_columns(["embedding"]), world.root / "noemb.parquet")
    with pytest.raises(WorkspaceError, match=r"no 'embedding' column.*broaden score"):
        round_start(ws, no_emb)
    assert _counts(ws)["rounds"] == 0


def test_unscored_pool_needs_a_classifier_of_the_same_embedding_version(world, started):
    ws, ids = started
    with pytest.raises(WorkspaceError, match="no classifier yet"):
        round_start(ws, world.pool2)
    round_import(ws, fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "a.csv",
                              {k: world.oracle[k] for k in ids}))
    round_finish(ws)
    other = pq.read_table(world.pool2)
    other = other.set_column(other.column_names.index("embedding_version"), "embedding_version",
                             pa.array(["v2"] * other.num_rows))
    with pytest.raises(WorkspaceError, match="'v2' differs from 'v1'"):
        round_start(ws, io.write_table(other, world.root / "v2.parquet"))


def test_mixed_versions_in_one_pool_are_refused(world):
    ws = new_workspace(world)
    t = pq.read_table(world.pool1)
    versions = ["v1"] * (t.num_rows - 1) + ["v2"]
    t = t.set_column(t.column_names.index("embedding_version"), "embedding_version", pa.array(versions))
    with pytest.raises(WorkspaceError, match="mixes embedding versions v1, v2"):
        round_start(ws, io.write_table(t, world.root / "mixed.parquet"))


def test_lsb_refuses_labelled_items_of_another_embedding_version(world):
    ws = new_workspace(world, strategy="entropy:0.5,lsb:0.5")
    t = pq.read_table(world.pool1)
    meta = {b"broaden.embedding_version": b"v2"}
    t = t.drop_columns(["embedding_version"]).replace_schema_metadata(meta)
    with pytest.raises(WorkspaceError, match="will not mix embedding versions"):
        round_start(ws, io.write_table(t, world.root / "v2meta.parquet"))


def test_config_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="class_names"):
        init(tmp_path / "a", {"budget": 3})
    with pytest.raises(ConfigError, match="unknown key"):
        init(tmp_path / "b", {"class_names": CLASSES, "budjet": 3})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("class_names: [a, b]\npool: data/pool.parquet\n")
    ws = init(tmp_path / "c", cfg)
    assert ws.config.pool == str((tmp_path / "data/pool.parquet").resolve())
    with pytest.raises(WorkspaceError, match="already a workspace"):
        init(tmp_path / "c", cfg)
    with pytest.raises(WorkspaceError, match="not a broaden workspace"):
        Workspace(tmp_path / "nowhere")
