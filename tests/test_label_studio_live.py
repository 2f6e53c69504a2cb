"""Two annotation rounds against a real Label Studio server: push → annotate through its API → pull → finish.

The server runs from ``.venv-ls/`` (``make install-dev``); the test skips, with one line, only when it is
not installed. Every label submitted is also written down here, and the ledger must match it exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.label_studio_server import ADMIN, label_studio, unavailable
from tests.test_rounds import CLASSES, make_world, new_workspace

from broaden.cli import main
from broaden.rounds import Workspace, round_finish, round_pull, round_push, status
from broaden.rounds.labelstudio import Client, LabelStudioError
from broaden.rounds.ledger import Ledger
from broaden.rounds.resolve import resolve_votes

pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]
PROJECT = "broaden live test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with label_studio(tmp_path_factory.mktemp("label-studio")) as srv:
        yield srv


def _choice(label: int) -> list[dict]:
    return [{"from_name": "label", "to_name": "image_path", "type": "choices", "value": {"choices": [CLASSES[label]]}}]


class Annotators:
    """Submits annotations through Label Studio's API and remembers what each user's latest label is."""

    def __init__(self, client: Client, users: dict[str, int]):
        self.client, self.users = client, users
        self.latest: dict[tuple[str, int, str], int] = {}  # (item, round, ledger annotator) -> label

    def annotate(self, task: dict, user: str, label: int, *, rnd: int) -> int:
        ann = self.client.request("POST", f"/api/tasks/{task['id']}/annotations/", what="annotating",
                                  json={"result": _choice(label), "completed_by": self.users[user]})
        self.latest[(str(task["data"]["item_id"]), rnd, f"label-studio:{self.users[user]}")] = label
        return ann["id"]

    def edit(self, ann_id: int, task: dict, user: str, label: int, *, rnd: int) -> None:
        self.client.request("PATCH", f"/api/annotations/{ann_id}/", what="editing", json={"result": _choice(label)})
        self.latest[(str(task["data"]["item_id"]), rnd, f"label-studio:{self.users[user]}")] = label

    def skip(self, task: dict, user: str) -> None:
        self.client.request("POST", f"/api/tasks/{task['id']}/annotations/", what="skipping",
                            json={"result": [], "was_cancelled": True, "completed_by": self.users[user]})


def tasks_of(client: Client, pid: int, rnd: int) -> list[dict]:
    tasks = [t for page in client.pages("/api/tasks/", what="listing", params={"project": pid, "fields": "all"},
                                        key="tasks") for t in page]
    return sorted((t for t in tasks if t["data"].get("broaden_round") == rnd), key=lambda t: t["data"]["broaden_rank"])


def ledger_votes(ws: Path, rnd: int | None = None) -> dict[tuple[str, int, str], int]:
    with Ledger.open(ws / "ledger.sqlite") as led:
        return {(v["item_key"], v["round"], v["annotator"]): v["label"] for v in led.votes(rnd)}


def mismatches(expected: dict, ws: Path, rnd: int) -> list:
    got = ledger_votes(ws, rnd)
    want = {k: v for k, v in expected.items() if k[1] == rnd}
    return sorted(set(want.items()) ^ set(got.items()))


def test_two_rounds_through_label_studio(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    world = make_world(tmp_path)
    ws = new_workspace(world)
    client = Client(server.url)
    bob = client.request("POST", "/api/users/", what="adding an annotator",
                         json={"email": "bob@broaden.test", "username": "bob", "password": "bob-secret-1"})
    admin_id = next(u["id"] for u in client.request("GET", "/api/users/", what="users") if u["email"] == ADMIN)
    people = Annotators(client, {"admin": admin_id, "bob": bob["id"]})

    # ---------------------------------------------------------------- round 1: push with `round start --to`
    assert main(["round", "start", str(ws), "--pool", str(world.pool1), "--to", "label-studio", server.url,
                 "--project", PROJECT]) == 0
    out = capsys.readouterr().out
    assert "40 task(s) uploaded with 40 prediction(s), 0 already there" in out and "created project" in out
    proj, _ = client.project(PROJECT)
    pid = proj["id"]
    tasks = tasks_of(client, pid, 1)
    assert len(tasks) == 40
    with Ledger.open(ws / "ledger.sqlite") as led:
        model1 = led.round(1)["model_id"]
        items = {i["item_key"]: i for i in led.items(1)}
    assert proj["model_version"] == model1
    for t in tasks:  # predictions and provenance are visible on every task
        (pred,) = t["predictions"]
        item = items[str(t["data"]["item_id"])]
        assert pred["model_version"] == model1 and 0 < pred["score"] <= 1
        assert pred["result"][0]["value"]["choices"] == [CLASSES[item["pred"]]]
        assert {"broaden_round", "broaden_strategy", "broaden_score", "broaden_rank"} <= set(t["data"])
        assert t["data"]["broaden_strategy"] == item["strategy"] and t["data"]["broaden_rank"] == item["rank"]
    assert {t["data"]["broaden_strategy"] for t in tasks} == {"entropy", "random"}

    # ------------------------------------------------------------- annotate round 1 through the API
    oracle = world.oracle
    agree = disagree = 0
    skipped, conflict, edited = tasks[0], tasks[1], tasks[2]
    for t in tasks[3:]:
        item = items[str(t["data"]["item_id"])]
        truth = oracle[str(t["data"]["item_id"])]
        agree += truth == item["pred"]
        disagree += truth != item["pred"]
        people.annotate(t, "admin", truth, rnd=1)
    assert agree and disagree  # annotators both confirm and overrule the model's pre-annotation
    people.skip(skipped, "admin")
    first = people.annotate(conflict, "admin", 0, rnd=1)
    people.annotate(conflict, "bob", 1, rnd=1)
    ann = people.annotate(edited, "admin", 0, rnd=1)
    people.edit(ann, edited, "admin", 2, rnd=1)

    assert main(["round", "import", str(ws), "--from", "label-studio", server.url]) == 0  # project: where pushed
    out = capsys.readouterr().out
    assert "40 new label(s), 0 already present, 1 task(s) without a label, 0 bad row(s)" in out
    assert mismatches(people.latest, ws, 1) == []
    before = Ledger.open(ws / "ledger.sqlite").counts()
    assert round_pull(ws, url=server.url, project=pid).already_imported  # a re-pull changes nothing
    assert Ledger.open(ws / "ledger.sqlite").counts() == before

    # status lists the tied and the pending (skipped) item; finish refuses, naming them
    r1 = status(ws)["rounds"][0]
    conflict_id, skipped_id = str(conflict["data"]["item_id"]), str(skipped["data"]["item_id"])
    assert r1["tied_items"] == [{"id": conflict_id, "votes": {CLASSES[0]: 1, CLASSES[1]: 1}}]
    assert r1["pending_items"] == [skipped_id]
    with pytest.raises(Exception, match=rf"1 without a label \('{skipped_id}'\) and 1 tied \('{conflict_id}'"):
        round_finish(ws)
    # the admin changes their mind on the conflict: their edit resolves the tie
    people.edit(first, conflict, "admin", 1, rnd=1)
    rep = round_pull(ws, url=server.url, project=PROJECT)
    assert (rep.new, rep.duplicates, rep.bad, rep.late) == (1, 39, [], [])
    assert mismatches(people.latest, ws, 1) == []
    with Ledger.open(ws / "ledger.sqlite") as led:
        resolved = resolve_votes(led.votes(1))
    assert resolved[(conflict_id, 1)].label == 1 and resolved[(str(edited["data"]["item_id"]), 1)].label == 2
    fin = round_finish(ws, allow_pending=True)
    assert (fin.pending, fin.tied) == (1, 0)

    # ------------------------------------------------------------- round 2: same project, config push
    cfg = Workspace(ws).config
    cfg_file = ws / "config.yaml"
    import yaml

    data = yaml.safe_load(cfg_file.read_text())
    data["label_studio"] = {"url": server.url, "project": PROJECT}
    cfg_file.write_text(yaml.safe_dump(data))
    assert cfg.class_names == CLASSES
    assert main(["round", "start", str(ws), "--pool", str(world.pool2)]) == 0  # pushes: the config has a url
    out = capsys.readouterr().out
    assert "40 task(s) uploaded with 40 prediction(s), 0 already there" in out and "existing project" in out
    again = round_push(ws)  # nothing twice
    assert (again.uploaded, again.already, again.project_id) == (0, 40, pid)
    tasks2 = tasks_of(client, pid, 2)
    assert len(tasks2) == 40 and len(tasks_of(client, pid, 1)) == 40
    with Ledger.open(ws / "ledger.sqlite") as led:
        model2 = led.round(2)["model_id"]
    assert model2 == fin.model_id and {t["predictions"][0]["model_version"] for t in tasks2} == {model2}

    for t in tasks2:
        people.annotate(t, "admin", oracle[str(t["data"]["item_id"])], rnd=2)
    people.annotate(tasks2[0], "bob", oracle[str(tasks2[0]["data"]["item_id"])], rnd=2)  # agreeing second vote
    # a late label: the item skipped in finished round 1 gets one now; reported once, never as a bad row
    people.annotate(skipped, "bob", 1, rnd=1)
    late_key = (skipped_id, 1, f"label-studio:{bob['id']}")
    expected = {k: v for k, v in people.latest.items() if k != late_key}
    rep = round_pull(ws)
    assert (rep.new, rep.bad) == (41, []) and [(x.item_id, x.round, x.label) for x in rep.late] == [(skipped_id, 1, 1)]
    assert mismatches(expected, ws, 2) == [] and mismatches(expected, ws, 1) == []
    assert round_pull(ws).already_imported
    # another change elsewhere makes a new pull: the late label is not reported again
    people.edit(client.request("GET", f"/api/tasks/{tasks2[1]['id']}/annotations/", what="x")[0]["id"], tasks2[1],
                "admin", (oracle[str(tasks2[1]["data"]["item_id"])] + 1) % 3, rnd=2)
    expected = {k: v for k, v in people.latest.items() if k != late_key}
    rep = round_pull(ws)
    assert (rep.new, rep.late, rep.bad) == (1, [], [])
    assert mismatches(expected, ws, 2) == [] and mismatches(expected, ws, 1) == []
    assert round_finish(ws).round == 2
    rounds = status(ws)["rounds"]
    assert [r["status"] for r in rounds] == ["finished", "finished"] and rounds[1]["labelled"] == 40

    # the ledger records where labels came from, never the token
    raw = (ws / "ledger.sqlite").read_bytes() + b"".join(p.read_bytes() for p in ws.glob("ledger.sqlite-*"))
    assert server.token.encode() not in raw


def test_errors_are_one_line(server, tmp_path, monkeypatch, capsys):
    world = make_world(tmp_path)
    ws = new_workspace(world)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-valid-token")
    assert main(["round", "start", str(ws), "--pool", str(world.pool1), "--to", "label-studio", server.url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "round 1 was started" in err and "HTTP 401" in err and "broaden round push" in err
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", server.token)
    with pytest.raises(LabelStudioError, match=r"project 987654 does not exist \(HTTP 404\)"):
        round_push(ws, url=server.url, project=987654)
    with pytest.raises(LabelStudioError, match="no project titled 'nope'"):
        round_pull(ws, url=server.url, project="nope")

    # Label Studio 1.2x turns legacy tokens off by default: the error says how to turn them on, and a
    # personal access token (JWT, exchanged for short-lived access tokens) works instead.
    client = Client(server.url)
    pat = client.request("POST", "/api/token/", what="creating a personal access token")["token"]
    jwt = Client(server.url, pat)
    jwt.request("POST", "/api/jwt/settings", what="disabling legacy tokens",
                json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": False})
    try:
        with pytest.raises(LabelStudioError, match="legacy token authentication has been disabled.*"
                           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true"):
            round_push(ws, url=server.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
        p = round_push(ws, url=server.url)
        assert p.uploaded == 40 and p.predictions == 40
        assert pat not in json.dumps(p.__dict__)
    finally:
        jwt.request("POST", "/api/jwt/settings", what="enabling legacy tokens",
                    json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True})

