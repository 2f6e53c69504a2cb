"""Fuzzing `broaden round import` with a seeded generator of malformed annotation files (issue 13).

Every generated file has a known outcome: files built only from broken parts must fail with exit status
2, one line on stderr naming the file and the row or field, no traceback, and the ledger byte-identical;
files that also hold one valid label must import it (exit 0). Runs in-process through the CLI entry point.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.test_rounds import CLASSES, make_world, new_workspace

from broaden.cli import main
from broaden.rounds.ledger import Ledger

SEED, CASES = 13, 300
WHERE = ("line ", "record ", "task ", "file", "header", "byte ")


@pytest.fixture(scope="module")
def open_round(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("fuzz"))
    ws = new_workspace(world)
    assert main(["round", "start", str(ws), "--pool", str(world.pool1)]) == 0
    ids = [str(i) for i in pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()]
    return ws, ids


# ------------------------------------------------------------------------------------- broken parts
def _bad_id(r: random.Random):
    return r.choice(["no-such-item", 999_999, "", None, [1], {"a": 1}, True, 1.5, " ", "9" * 50])


def _bad_label(r: random.Random):
    return r.choice([7, -1, "weather", "\u0661", "\uff12", "\u00b2", True, 1.5, [0], {"x": 1}, "9" * 40,
                     float("nan"), "x" * 300])


def _record(r: random.Random, ids) -> dict:
    """A record with no valid vote: an unknown or malformed id, or a known id with a label that is no class."""
    if r.random() < 0.5:
        return {"id": _bad_id(r), "label": r.choice([0, "tech", _bad_label(r)])}
    return {"id": int(r.choice(ids)), "label": _bad_label(r)}


def _csv_cell(value) -> str:
    return "" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _csv(r: random.Random, ids, good: str | None) -> tuple[str, str]:
    rows = [_record(r, ids) for _ in range(r.randint(1, 6))]
    body = [f'{_csv_cell(x["id"])},"{_csv_cell(x["label"])}"' for x in rows]
    # A file that must import its valid row keeps a readable header.
    kind = r.choice(["rows", "quote", "fields", "huge"] + ([] if good else ["delimiter", "header", "empty"]))
    header = "id,label"
    if kind == "delimiter":
        header, body = "id;label", [b.replace(",", ";") for b in body]
    elif kind == "header":
        header = r.choice(["", "identifier,label", "id,class", "id", "\ufeffid label"])
    elif kind == "quote":
        body.append(f'{r.choice(ids)},"tech')  # left open to the end of the file
    elif kind == "fields":
        body = [b + ",extra" for b in body]
    elif kind == "huge":
        body.append(f'{r.choice(ids)},"{"x" * 140_000}"')
    elif kind == "empty":
        header, body = "", []
    if good:
        body.insert(0, good)  # before a quote left open: read before the reader stops
    return ".csv", "\n".join([header, *body]) + "\n"


def _jsonl(r: random.Random, ids, good: dict | None) -> tuple[str, str]:
    lines = []
    for _ in range(r.randint(1, 6)):
        kind = r.choice(["record", "truncated", "scalar", "bigint", "nested"])
        if kind == "record":
            lines.append(json.dumps(_record(r, ids)))
        elif kind == "truncated":
            lines.append(json.dumps(_record(r, ids))[: r.randint(1, 8)])
        elif kind == "scalar":
            lines.append(r.choice(["5", "null", '"x"', "[]", "true"]))
        elif kind == "bigint":
            lines.append('{"id": %s, "label": %s}' % (r.choice(ids), "9" * 5000))
        else:
            lines.append("[" * 50_000 + "]" * 50_000)
    if good:
        lines.insert(r.randint(0, len(lines)), json.dumps(good))
    return ".jsonl", "\n".join(lines) + "\n"


def _json(r: random.Random, ids, good: dict | None) -> tuple[str, str]:
    kind = r.choice(["records", "truncated", "object", "scalars", "nested", "bigint"])
    records = [_record(r, ids) for _ in range(r.randint(1, 5))] + ([good] if good else [])
    if kind == "records" or good:
        return ".json", json.dumps(records)
    if kind == "truncated":
        text = json.dumps(records)
        return ".json", text[: r.randint(1, len(text) - 1)]
    if kind == "object":
        return ".json", json.dumps({"records": records})
    if kind == "scalars":
        return ".json", json.dumps([5, None, "x", [1]])
    if kind == "nested":
        return ".json", "[" * 100_000 + "]" * 100_000
    return ".json", "[" + "1" * 5000 + "]"


def _ls_task(r: random.Random, ids) -> dict:
    """A Label Studio task with no valid vote."""
    item = int(r.choice(ids))
    kind = r.choice(["annotations", "choices", "meta", "data", "no-id", "result", "user", "unknown", "flat"])
    ann = {"completed_by": 1, "result": [{"from_name": "label", "value": {"choices": ["tech"]}}]}
    task = {"id": item, "data": {"item_id": item}, "annotations": [ann]}
    if kind == "annotations":
        task["annotations"] = r.choice([5, "x", {"a": 1}, [5], [None]])
    elif kind == "choices":
        ann["result"][0]["value"]["choices"] = r.choice([5, None, [], ["tech", "sports"], "tech", [_bad_label(r)]])
    elif kind == "meta":
        task["meta"] = r.choice(["x", 5, [1]])
    elif kind == "data":
        task["data"] = r.choice([None, "x", 5, [item]])
    elif kind == "no-id":
        task["data"] = {"text": "no id"}
    elif kind == "result":
        ann["result"] = r.choice([5, "x", {"value": 1}])
    elif kind == "user":
        ann["completed_by"] = r.choice([[1], {"id": [1]}, True, 2.5])
    elif kind == "unknown":
        task["data"]["item_id"] = "no-such-item"
    else:  # a JSON_MIN row without the item id: its 'id' is Label Studio's task id
        return {"id": item, "label": "tech", "annotator": 1, "annotation_id": 3, "lead_time": 1.0}
    return task


def _label_studio(r: random.Random, ids, good: dict | None) -> tuple[str, str]:
    tasks = [_ls_task(r, ids) for _ in range(r.randint(1, 5))]
    if good:  # first: a file is told to be Label Studio tasks by its first entry
        tasks.insert(0, {"data": {"item_id": good["id"]},
                      "annotations": [{"completed_by": 2, "result": [{"value": {"choices": [good["label"]]}}]}]})
    return ".json", json.dumps(tasks)


def _encoding(r: random.Random, ids, good) -> tuple[str, bytes]:
    text = f"id,label\n{r.choice(ids)},tech\n"
    return ".csv", r.choice([text.encode("utf-16"), b"id,label\n\xe9\xff,1\n", text.encode() + b"\x80"])


GENERATORS = (_csv, _jsonl, _json, _label_studio)


def cases(n: int = CASES, seed: int = SEED, ids=None):
    """(suffix, content, expected exit status) for ``n`` files; about one in five holds one valid label."""
    r = random.Random(seed)
    for i in range(n):
        if i % 25 == 24:
            suffix, content = _encoding(r, ids, None)
            yield i, suffix, content, 2
            continue
        valid = r.random() < 0.2
        gen = r.choice(GENERATORS)
        good = None
        if valid:
            item = r.choice(ids)
            label = r.choice(CLASSES)
            good = f"{item},{label}" if gen is _csv else {"id": int(item), "label": label}
        suffix, content = gen(r, ids, good)
        yield i, suffix, content, 0 if valid else 2


def _ledger_bytes(ws: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ws.glob("ledger.sqlite*"))}


def test_malformed_imports_fail_cleanly(open_round, tmp_path, capsys):
    ws, ids = open_round
    seen = {0: 0, 2: 0}
    for i, suffix, content, expected in cases(ids=ids):
        path = tmp_path / f"case-{i:03d}{suffix}"
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        before = _ledger_bytes(ws)
        code = main(["round", "import", str(ws), str(path)])
        out, err = capsys.readouterr()
        context = f"case {i} ({path.name}): {content[:200]!r}\nstdout: {out}\nstderr: {err[:2000]}"
        assert code == expected, context
        assert "Traceback" not in err, context
        seen[code] += 1
        if expected == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and str(path) in lines[0], context
            assert any(w in lines[0] for w in WHERE), context
            assert _ledger_bytes(ws) == before, context
    assert seen[0] >= 30 and seen[2] >= 200, seen
    with Ledger.open(ws / "ledger.sqlite") as led:
        assert led.counts()["imports"] <= seen[0]  # failed files are never recorded
