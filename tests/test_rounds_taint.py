"""Issue 13: rounds and inputs that never taint data (evaluation leakage, honest imports, exact ids,
Label Studio ids and annotators, clear errors, config checked at init, formula-safe CSV)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.test_rounds import CLASSES, DIM, fill_csv, new_workspace, started, world  # noqa: F401 (fixtures)

from broaden import io
from broaden.cli import main
from broaden.rounds import ImportRejected, init, round_finish, round_import, round_start
from broaden.rounds.config import ConfigError
from broaden.rounds.ledger import Ledger
from broaden.rounds.workspace import EvaluationLeakError, WorkspaceError
from broaden.select import select
from broaden.errors import SelectionError


def _votes(ws) -> dict[tuple[str, str], int]:
    with Ledger.open(ws / "ledger.sqlite") as led:
        return {(v["item_key"], v["annotator"]): v["label"] for v in led.votes()}


def _batch_ids(ws, number: int = 1) -> list[str]:
    return [str(i) for i in pq.read_table(ws / f"rounds/{number:04d}/batch.parquet").column("id").to_pylist()]


def _as_pool_rows(table: pa.Table, like: pa.Table) -> pa.Table:
    """Rows of the labelled / eval table shaped like pool rows, with maximally uncertain probabilities so
    that every uncertainty strategy would pick them first."""
    n = table.num_rows
    cols = {"id": table.column("id"), "probs": io.matrix_to_list_array(np.full((n, 3), 1 / 3, np.float32)),
            "embedding": table.column("embedding"), "text": pa.array(["x"] * n),
            "image_path": pa.array(["/m.jpg"] * n), "embedding_version": pa.array(["v1"] * n)}
    return pa.table({name: cols[name].cast(like.schema.field(name).type) for name in like.column_names})


# ------------------------------------------------------------------------------ 1. evaluation leakage
def test_no_evaluation_or_labelled_id_is_selected_or_trained_on(world):
    ws = new_workspace(world, strategy="entropy:0.4,random:0.3,lsb-lt:0.3", discrepancy="nominal",
                       lookalike_threshold=0.3)
    pool1 = pq.read_table(world.pool1)
    ev, lab = pq.read_table(world.eval), pq.read_table(world.labeled)
    overlap = pa.concat_tables([pool1, _as_pool_rows(ev, pool1), _as_pool_rows(lab, pool1)])
    pool = io.write_table(overlap, world.root / "overlap.parquet")
    forbidden = set(map(str, ev.column("id").to_pylist())) | set(map(str, lab.column("id").to_pylist()))

    round_start(ws, pool)
    ids = _batch_ids(ws)
    assert len(ids) == 40 and not set(ids) & forbidden
    round_import(ws, fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "r1.csv",
                              {k: world.oracle[k] for k in ids}))
    assert round_finish(ws).trained_on == 60 + 40

    # The evaluation table later gains an item a round already sent: finish refuses to train on it.
    round_start(ws, pool)
    ids2 = _batch_ids(ws, 2)
    assert not set(ids2) & (forbidden | set(ids))
    grown = pa.concat_tables([ev, pool1.filter(pa.compute.is_in(pool1.column("id"), pa.array([int(ids2[0])])))
                              .select(["id", "embedding", "embedding_version"])
                              .append_column("label", pa.array([0], pa.int64())).select(ev.column_names)])
    io.write_table(grown, world.eval)
    round_import(ws, fill_csv(ws / "rounds/0002/export/batch.csv", world.root / "r2.csv",
                              {k: world.oracle[k] for k in ids2}))
    with pytest.raises(EvaluationLeakError, match=rf"refusing to train on 1 id\(s\) of the evaluation table "
                       rf"{world.eval}: '{ids2[0]}'"):
        round_finish(ws)
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert led.round(2)["status"] == "open"


def test_a_selector_that_ignores_exclusions_cannot_send_evaluation_items(world):
    from broaden.rounds import Workspace

    ws_path = new_workspace(world)
    ev = pq.read_table(world.eval)
    pool1 = pq.read_table(world.pool1)
    pool = io.write_table(pa.concat_tables([pool1, _as_pool_rows(ev, pool1)]), world.root / "p.parquet")

    def careless(pool, strategy, budget, **kwargs):  # a plug-in selector that drops `exclude`
        return select(pool, "entropy", budget, columns=kwargs["columns"])

    with pytest.raises(WorkspaceError, match="excluded item"):
        round_start(Workspace(ws_path, selector=careless), pool)


def test_select_skips_pool_rows_that_already_carry_a_label(tmp_path):
    n = 20
    probs = np.tile([0.9, 0.05, 0.05], (n, 1))
    probs[:6] = 1 / 3  # the most uncertain rows...
    labels = [0, 1, None, -1, 2, 0] + [None] * (n - 6)  # ...four of which are labelled already
    pool = io.make_scored_table(np.arange(n), probs, labels=labels)
    picked = select(pool, "entropy", 4)["id"].to_pylist()
    assert set(picked[:2]) == {2, 3} and not set(picked) & {0, 1, 4, 5}
    with pytest.raises(SelectionError, match="16 eligible"):
        select(pool, "entropy", 17)


def test_init_checks_the_config_at_once(world, tmp_path):
    base = {"class_names": CLASSES, "labeled": str(world.labeled), "eval": str(world.eval)}
    bad = [({"seed_threshold": 1.5}, ConfigError, "seed_threshold must be a number in 0..1"),
           ({"lookalike_threshold": 2}, ConfigError, "lookalike_threshold"),
           ({"k": 0}, ConfigError, "k must be a positive integer"),
           ({"strategy": "entropy:0.5,nosuch:0.5"}, ConfigError, "unknown strategy 'nosuch'"),
           ({"strategy": "entropy:0.7,random:0.7"}, ConfigError, "sum to 1.4"),
           ({"labeled": str(tmp_path / "missing.parquet")}, ConfigError, "no such file"),
           ({"class_names": ["a", "b"]}, ConfigError, "expected 2"),
           ({"eval": str(world.labeled)}, EvaluationLeakError, "60 id")]
    for n, (change, error, message) in enumerate(bad):
        with pytest.raises(error, match=message):
            init(tmp_path / f"ws{n}", base | change)
        assert not (tmp_path / f"ws{n}").exists()


def test_pool_with_another_class_count_is_refused_at_start(world):
    ws = new_workspace(world)
    t = pq.read_table(world.pool1)
    four = np.full((t.num_rows, 4), 0.25, np.float32)
    t = t.set_column(t.column_names.index("probs"), "probs", io.matrix_to_list_array(four))
    with pytest.raises(WorkspaceError, match=r"has 4 values, expected 3.*3 class names \(sports, tech, politics\)"):
        round_start(ws, io.write_table(t, world.root / "c4.parquet"))
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert led.counts()["rounds"] == 0


# ------------------------------------------------------------------------- 2. failed lenient imports
def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name, text, fmt, why", [
    ("wrong-format.csv", None, "json", "not valid JSON"),
    ("semicolons.csv", "id;label\n{0};1\n", "auto", "expected columns 'id' and 'label'"),
    ("truncated.json", '[{{"id": {0}, "label": 1}}, {{"id": ', "auto", "not valid JSON"),
    ("unbalanced.csv", 'id,label,annotator\n{0},1,"ann\n{1},2,bob\n', "auto", "unexpected end of data"),
])
def test_a_file_that_stores_nothing_fails_and_stays_importable(world, started, capsys, name, text, fmt, why):
    ws, ids = started
    path = world.root / name
    good = fill_csv(ws / "rounds/0001/export/batch.csv", world.root / "good.csv", {ids[0]: 1, ids[1]: 2})
    path.write_text(good.read_text() if text is None else text.format(*ids))
    code, _, err = _run(capsys, "round", "import", ws, path, "--format", fmt)
    assert code == 2 and "nothing imported" in err and why in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert led.counts()["imports"] == 0  # not recorded: the fixed file is not "already imported"
    path.write_bytes(good.read_bytes())
    code, out, _ = _run(capsys, "round", "import", ws, path)
    assert code == 0 and "2 new label(s)" in out


def test_an_unbalanced_quote_is_a_bad_row_not_an_unlabelled_one(world, started):
    ws, ids = started
    path = world.root / "q.csv"  # the quote closes two rows later: the rows in between are swallowed
    path.write_text(f'id,label,note\n{ids[0]},1,ok\n{ids[1]},,"oops\n{ids[2]},0,x\n{ids[3]},1,y",z\n{ids[4]},0,ok\n')
    rep = round_import(ws, path)
    assert (rep.new, rep.unlabelled) == (2, 0)
    assert [b.where for b in rep.bad] == ["line 3"] and "unbalanced quote" in rep.bad[0].reason


def test_bad_rows_are_summarised_not_listed(world, started, capsys):
    ws, ids = started
    path = world.root / "many.csv"
    path.write_text(f"id,label\n{ids[0]},1\n" + "".join(f"nope-{i},1\n" for i in range(5000))
                    + "".join(f"{ids[1]},weather{i}\n" for i in range(300)))
    code, out, err = _run(capsys, "round", "import", ws, path)
    assert code == 0 and "1 new label(s)" in out and "5300 bad row(s)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 22  # the counts, the first 20, "… and N more"
    assert lines[0].strip() == "5300 bad row(s) (id never sent out: 5000, bad label: 300)"
    assert lines[-1].strip() == "… and 5280 more"


# ------------------------------------------------------------------- 3 + 8. ids byte for byte, CSV safety
ODD_IDS = [" lead", "trail ", " both ", "-minus", "=SUM(1+1)", "+plus", "@at", "\ttab", "'=quoted", "''two",
           "'plain", "plain"]


@pytest.fixture
def odd_ws(tmp_path):
    rng = np.random.default_rng(1)
    n = len(ODD_IDS)
    probs = rng.dirichlet(np.ones(3), n)
    pool = io.make_scored_table(np.asarray(ODD_IDS, dtype=object), probs, rng.normal(size=(n, DIM)),
                                extra={"text": ["=cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "plain"] * (n // 4)})
    path = io.write_table(pool, tmp_path / "odd.parquet")
    init(tmp_path / "ws", {"class_names": CLASSES, "strategy": "random", "budget": n})
    round_start(tmp_path / "ws", path)
    return tmp_path / "ws"


def _fill_records(records, key="id"):
    return [r | {"label": CLASSES[ODD_IDS.index(r[key]) % 3], "annotator": "ann"} for r in records]


def test_odd_ids_round_trip_through_every_format(odd_ws, tmp_path):
    export = odd_ws / "rounds/0001/export"
    raw = (export / "batch.csv").read_text()
    # Formula injection: text cells and ids starting with = + - @ tab are prefixed with ' (an id's own
    # leading ' too, so import can strip exactly what was added).
    assert "'=cmd|" in raw and "'-2+3" in raw and "'@SUM" in raw and "'=SUM(1+1)" in raw and "''=quoted" in raw
    want = {(k, "ann"): ODD_IDS.index(k) % 3 for k in ODD_IDS}

    with open(export / "batch.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"], r["annotator"] = str(ODD_IDS.index(_unescape(r["id"])) % 3), "ann"
    with open(tmp_path / "f.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    jsonl = _fill_records([json.loads(line) for line in (export / "batch.jsonl").read_text().splitlines()])
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
    (tmp_path / "f.json").write_text(json.dumps(jsonl))
    tasks = json.loads((export / "tasks.json").read_text())
    for n, t in enumerate(tasks):
        label = CLASSES[ODD_IDS.index(t["data"]["item_id"]) % 3]
        t.update(id=n, annotations=[{"completed_by": 3, "result": [{"value": {"choices": [label]}}]}])
    (tmp_path / "ls.json").write_text(json.dumps(tasks))

    for name in ("f.csv", "f.jsonl", "f.json"):
        rep = round_import(odd_ws, tmp_path / name)
        assert (rep.labels, rep.bad) == (len(ODD_IDS), []), name
        assert _votes(odd_ws) == want
    rep = round_import(odd_ws, tmp_path / "ls.json")
    assert (rep.labels, rep.bad) == (len(ODD_IDS), [])
    assert {k for k, a in _votes(odd_ws) if a == "label-studio:3"} == set(ODD_IDS)


def _unescape(cell: str) -> str:
    from broaden.rounds.formats import csv_id

    return csv_id(cell)


def test_hand_written_ids_starting_with_a_quote_are_kept(odd_ws, tmp_path):
    path = tmp_path / "hand.csv"
    path.write_text("id,label\n'plain,1\n")  # ' followed by a letter: never added by broaden, kept
    round_import(odd_ws, path)
    assert ("'plain", "unnamed") in _votes(odd_ws)


# ---------------------------------------------------------------------- 4 + 5. Label Studio exports
def _ls_exports(ws, ids, labels):
    """The same annotations as Label Studio exports them: JSON (nested data, completed_by), JSON_MIN and CSV
    (flat: 'id' is Label Studio's task id, here chosen to collide with other item ids of the round)."""
    tasks = json.loads((ws / "rounds/0001/export/tasks.json").read_text())
    full, flat = [], []
    for n, t in enumerate(tasks):
        key = str(t["data"]["item_id"])
        if key not in labels:
            continue
        task_id = int(ids[(n + 1) % len(ids)])  # collides with another item's id
        full.append(t | {"id": task_id, "annotations": [
            {"id": n, "completed_by": 1, "result": [{"from_name": "label", "value": {"choices": [labels[key]]}}]}]})
        flat.append({**t["data"], "id": task_id, "label": labels[key], "annotator": 1, "annotation_id": n,
                     "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "lead_time": 2.5})
    return full, flat


def _write_flat_csv(path, flat):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat[0]))
        w.writeheader()
        w.writerows(flat)
    return path


def test_label_studio_flat_exports_use_the_item_id_and_one_annotator_identity(world, started):
    ws, ids = started
    labels = {k: CLASSES[world.oracle[k]] for k in ids[:10]}
    full, flat = _ls_exports(ws, ids, labels)
    (world.root / "min.json").write_text(json.dumps(flat))
    rep = round_import(ws, world.root / "min.json")
    assert (rep.format, rep.new, rep.bad) == ("label-studio-min", 10, [])
    want = {(k, "label-studio:1"): world.oracle[k] for k in labels}
    assert _votes(ws) == want
    # The same votes from the JSON and CSV exports are the same annotator: nothing doubles.
    (world.root / "full.json").write_text(json.dumps(full))
    rep = round_import(ws, world.root / "full.json")
    assert (rep.format, rep.new, rep.duplicates) == ("label-studio", 0, 10)
    rep = round_import(ws, _write_flat_csv(world.root / "ls.csv", flat))
    assert (rep.format, rep.new, rep.duplicates) == ("label-studio-csv", 0, 10)
    assert _votes(ws) == want


def test_label_studio_user_objects_and_emails_are_one_identity(world, started):
    ws, ids = started
    labels = {ids[0]: "tech"}
    full, flat = _ls_exports(ws, ids, labels)
    full[0]["annotations"][0]["completed_by"] = {"id": 1, "email": "a@example.com"}
    flat[0]["annotator"] = "a@example.com"
    (world.root / "full.json").write_text(json.dumps(full))
    (world.root / "min.json").write_text(json.dumps(flat))
    assert round_import(ws, world.root / "full.json").new == 1
    assert round_import(ws, world.root / "min.json").new == 0
    assert _votes(ws) == {(ids[0], "label-studio:a@example.com"): 1}


def test_label_studio_flat_export_without_item_id_is_refused(world, started, capsys):
    ws, ids = started
    _, flat = _ls_exports(ws, ids, {k: "tech" for k in ids[:5]})
    for rec in flat:  # tasks made before data.item_id: only Label Studio's task id is left
        rec.pop("item_id")
    (world.root / "old-min.json").write_text(json.dumps(flat))
    code, _, err = _run(capsys, "round", "import", ws, world.root / "old-min.json")
    assert code == 2 and "nothing imported" in err and "Label Studio's task id, not the item id" in err
    assert _votes(ws) == {}


# ---------------------------------------------------------------------------------- 6. clear errors
LS_OK = {"data": {"item_id": "{id}"}, "annotations": [{"result": [{"value": {"choices": ["tech"]}}]}]}


@pytest.mark.parametrize("name, content, why", [
    ("huge.csv", 'id,label\n{id},"' + "x" * 140_000 + '"\n', "field larger than field limit"),
    ("bigint.jsonl", '{"id": {id}, "label": ' + "9" * 5000 + "}\n", "not valid JSON"),
    ("nested.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("choices5.json", json.dumps([{"data": {"item_id": "{id}"}, "annotations": [
        {"result": [{"value": {"choices": 5}}]}]}]), "'choices' must be a list"),
    ("choicesnull.json", json.dumps([{"data": {"item_id": "{id}"}, "annotations": [
        {"result": [{"value": {"choices": None}}]}]}]), "'choices' must be a list"),
    ("ann5.json", json.dumps([{"data": {"item_id": "{id}"}, "annotations": 5}]), "'annotations' must be a list"),
    ("meta.json", json.dumps([LS_OK | {"meta": "x"}]), "'meta' must be an object"),
    ("arabic.csv", "id,label\n{id},\u0661\n", "neither a class index"),
    ("fullwidth.csv", "id,label\n{id},\uff12\n", "neither a class index"),
])
def test_malformed_imports_are_one_line_errors(world, started, capsys, name, content, why):
    ws, ids = started
    path = world.root / name
    path.write_text(content.replace("{id}", ids[0]))
    before = (ws / "ledger.sqlite").read_bytes()
    code, _, err = _run(capsys, "round", "import", ws, path)
    assert code == 2 and why in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and len(err) < 3000
    assert (ws / "ledger.sqlite").read_bytes() == before


def test_corrupt_batch_file_is_a_clear_error_when_exports_are_recreated(world, started, capsys):
    ws, _ = started
    (ws / "rounds/0001/export/batch.csv").unlink()
    batch = ws / "rounds/0001/batch.parquet"
    batch.write_bytes(batch.read_bytes()[:200] + b"\0" * 500)
    labels = world.root / "any.csv"
    labels.write_text("id,label\n1,1\n")
    code, _, err = _run(capsys, "round", "import", ws, labels)
    assert code == 2 and "batch file of round 1 is unreadable" in err and "Traceback" not in err
