"""Label Studio over its REST API: push a round's tasks to a project, pull the annotations back.

* **Push** (``round start --to label-studio URL`` / ``round push``): find the project (id or title) or
  create it with the labeling config broaden writes, set its ``model_version`` to the model that scored
  the round, and upload the tasks that are not in it yet, in chunks. Each task is the one in
  ``tasks.json``: item fields and ``broaden_*`` provenance in ``data``, the selecting model's class as a
  prediction. Re-running a push uploads only what is missing, so a push cut short is simply repeated.
* **Pull** (``round import --from label-studio URL``): page through the project's tasks with their
  annotations and hand them to the same parser and the same accounting as a Label Studio JSON export
  file (:func:`broaden.rounds.annotate.import_parsed`): a digest of what was pulled makes a re-pull
  change nothing, identical votes are stored once, and each task's ``data.broaden_round`` says which
  round a label is for.

Authentication: the token comes from ``$LABEL_STUDIO_API_KEY`` only (never a flag or the config file,
which get copied and committed). A legacy token is sent as ``Token …``; a personal access token (a JWT)
is exchanged for a short-lived access token at ``/api/token/refresh/`` and sent as ``Bearer …``.
Every failure is one :class:`LabelStudioError` line naming the server, the project and what was being
done; requests time out and are retried a bounded number of times, and only when retrying cannot
upload a task twice.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from broaden.errors import BroadenError
from broaden.rounds.annotate import ImportReport, import_parsed
from broaden.rounds.formats import (
    ITEM_ID, LS_ROUND, label_studio_tasks, labeling_config, parse_annotations,
)
from broaden.rounds.workspace import Workspace, WorkspaceError

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
IMPORT_CHUNK = 1000  # tasks per upload: one request stays well under Label Studio's body limit
PAGE_SIZE = 1000
TIMEOUT = (10.0, 300.0)  # (connect, read) seconds; importing a chunk of tasks can take a while
RETRIES = 4
PUSHED_META = "label_studio.round.{}"  # ledger meta: where a round was pushed (url without credentials, project)
TITLE_MAX = 50  # Label Studio's limit on a project title
LEGACY_HINT = (
    "; Label Studio 1.2x disables legacy tokens by default: enable them (Organization → Settings → Access Token "
    "Settings, or start Label Studio with LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true) or set "
    f"{TOKEN_ENV} to a personal access token"
)


class LabelStudioError(BroadenError):
    """A Label Studio request failed; the message names the server, the project and the request."""


def shown_url(url: str) -> str:
    """The URL without user:password and trailing slash: what messages and the ledger may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


class Client:
    """A small REST client: one session, bounded retries, one-line errors. ``token`` defaults to
    ``$LABEL_STUDIO_API_KEY``."""

    def __init__(self, url: str, token: str | None = None, *, timeout: tuple[float, float] = TIMEOUT,
                 retries: int = RETRIES, sleep: Callable[[float], None] = time.sleep):
        try:
            import requests
        except ImportError as exc:  # pragma: no cover - requests comes with transformers
            raise LabelStudioError("talking to Label Studio needs the 'requests' package: "
                                   "pip install 'broaden[label-studio]'") from exc
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        self._requests = requests
        self.url = url.rstrip("/")
        self.shown = shown_url(url)
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        if not token.strip():
            raise LabelStudioError(f"{TOKEN_ENV} is not set: export it with your Label Studio access token (Account "
                                   "& Settings → Legacy Token or Personal Access Token); tokens are never read from "
                                   "flags or the config file")
        self._token = token.strip()
        self._access: str | None = None
        self.timeout, self.retries, self.sleep = timeout, max(1, retries), sleep
        self.session = requests.Session()

    # ----------------------------------------------------------------------------------- requests
    def _headers(self, what: str) -> dict[str, str]:
        if not _is_jwt(self._token):
            return {"Authorization": f"Token {self._token}"}
        if self._access is None:
            self._access = self.request("POST", "/api/token/refresh/", what=f"{what} (exchanging the personal "
                                        "access token)", json={"refresh": self._token}, auth=False)["access"]
        return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path: str, *, what: str, params: dict | None = None, json=None,
                auth: bool = True):
        """One request, retried on connection failures and 429/502/503/504 (a POST only when the connection
        was never made, so an upload is never sent twice); returns the decoded JSON body."""
        requests = self._requests
        refreshed = False
        for attempt in range(1, self.retries + 1):
            last = attempt == self.retries
            headers = self._headers(what) if auth else {}
            try:
                r = self.session.request(method, self.url + path, params=params, json=json, headers=headers,
                                         timeout=self.timeout)
            except requests.ConnectionError as exc:
                not_sent = isinstance(exc, requests.ConnectTimeout) or _refused(exc)
                if not last and (method == "GET" or not_sent):
                    self.sleep(0.5 * 2 ** (attempt - 1))
                    continue
                why = "connection refused" if _refused(exc) else type(exc).__name__
                raise LabelStudioError(f"Label Studio at {self.shown}: cannot connect ({why}) while {what}; is the "
                                       "server running and the URL right?") from None
            except requests.Timeout:
                if not last and method == "GET":
                    continue
                raise LabelStudioError(f"Label Studio at {self.shown}: no answer within {self.timeout[1]:g} s while "
                                       f"{what}") from None
            if r.status_code in (429, 502, 503, 504) and not last and (method == "GET" or r.status_code != 504):
                self.sleep(0.5 * 2 ** (attempt - 1))
                continue
            if r.status_code == 401 and auth and _is_jwt(self._token) and not refreshed:
                self._access, refreshed = None, True  # the short-lived access token expired: exchange again
                continue
            if r.status_code >= 400:
                raise self._http_error(r, what)
            if not r.content:
                return None
            try:
                return r.json()
            except ValueError:
                raise LabelStudioError(f"Label Studio at {self.shown}: {what}: the answer is not JSON (is "
                                       f"{self.shown} a Label Studio server?)") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _http_error(self, r, what: str) -> LabelStudioError:
        detail = ""
        try:
            body = r.json()
            if isinstance(body, dict):
                detail = body.get("detail") or ""
                errors = body.get("validation_errors")
                if errors:
                    detail = f"{detail}: {json.dumps(errors)[:300]}" if detail else json.dumps(errors)[:300]
        except ValueError:
            pass  # an HTML error page says nothing a person needs here
        detail = " ".join(str(detail).split())
        hint = ""
        if r.status_code == 401:
            hint = LEGACY_HINT if "legacy" in detail.lower() else f"; check {TOKEN_ENV}"
        elif r.status_code == 403:
            hint = "; the token's user lacks permission for this project"
        text = f"HTTP {r.status_code} {r.reason or ''}".strip()
        return LabelStudioError(f"Label Studio at {self.shown}: {what}: {text}{': ' + detail if detail else ''}{hint}")

    def pages(self, path: str, *, what: str, params: dict, key: str) -> Iterator[list[dict]]:
        """Page through a list endpoint (``page``/``page_size``) until ``total`` (or ``count``) is reached."""
        page, seen = 1, 0
        while True:
            body = self.request("GET", path, what=f"{what} (page {page})",
                                params={**params, "page": page, "page_size": PAGE_SIZE})
            items = body.get(key) if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise LabelStudioError(f"Label Studio at {self.shown}: {what}: unexpected answer (no {key!r} list)")
            yield items
            seen += len(items)
            total = body.get("total", body.get("count")) if isinstance(body, dict) else None
            if not items or total is None or seen >= total:
                return
            page += 1

    # ----------------------------------------------------------------------------------- projects
    def project(self, ref: int | str, *, create: dict | None = None) -> tuple[dict, bool]:
        """The project with id ``ref`` (an int or digits) or title ``ref``; created from ``create`` (title,
        label_config) when no project has that title. Returns (project, created)."""
        if isinstance(ref, int) or str(ref).strip().isdigit():
            pid = int(ref)
            try:
                return self.request("GET", f"/api/projects/{pid}/", what=f"reading project {pid}"), False
            except LabelStudioError as exc:
                if "HTTP 404" in str(exc):
                    raise LabelStudioError(f"Label Studio at {self.shown}: project {pid} does not exist (HTTP 404); "
                                           "pass --project with an existing id or a title") from None
                raise
        title = str(ref)
        found = [p for items in self.pages("/api/projects/", what=f"looking up project {title!r}",
                                           params={"title": title}, key="results")
                 for p in items if p.get("title") == title]
        if len(found) > 1:
            raise LabelStudioError(f"Label Studio at {self.shown}: {len(found)} projects are titled {title!r} (ids "
                                   f"{', '.join(str(p['id']) for p in found)}); pass --project ID")
        if found:
            return found[0], False
        if create is None:
            raise LabelStudioError(f"Label Studio at {self.shown}: no project titled {title!r}; push the round first "
                                   "(`broaden round push`) or pass --project ID")
        return self.request("POST", "/api/projects/", what=f"creating project {title!r}", json=create), True


# ------------------------------------------------------------------------------------------ settings
def _target(ws: Workspace, url: str | None, project: int | str | None, number: int | None = None,
            ledger=None) -> tuple[str, int | str]:
    """URL and project from the arguments, else where the round was pushed, else the config, else
    ``broaden <workspace folder>``."""
    pushed = {}
    if ledger is not None and number is not None:
        pushed = json.loads(ledger.get_meta(PUSHED_META.format(number)) or "{}")
    cfg = ws.config.label_studio or {}
    url = url or cfg.get("url") or pushed.get("url")
    if not url:
        raise WorkspaceError("no Label Studio URL: pass --to/--from label-studio URL or set label_studio.url in "
                             "the workspace config")
    same_server = pushed.get("url") == shown_url(url)
    project = project or (pushed.get("project") if same_server else None) or cfg.get("project") \
        or default_title(ws)
    return url, project


def default_title(ws: Workspace) -> str:
    return f"broaden {ws.path.resolve().name}"[:TITLE_MAX]


def _same_config(a: str, b: str) -> bool:
    return "".join(a.split()) == "".join(b.split())


# ------------------------------------------------------------------------------------------ push
@dataclass
class PushReport:
    url: str
    project_id: int
    project_title: str
    created: bool
    round: int
    tasks: int
    uploaded: int
    already: int
    predictions: int
    seconds: float


def push_round(ws: Workspace, *, url: str | None = None, project: int | str | None = None,
               round: int | None = None, client: Client | None = None) -> PushReport:
    """Upload an open round's tasks (with predictions and provenance) to a Label Studio project."""
    t0 = time.perf_counter()
    cfg = ws.config
    with ws.locked() as ledger:
        number = ws.open_round(ledger, round, "push")
        url, project = _target(ws, url, project, number, ledger)
        client = client or Client(url)
        batch = ws.read_batch(number, ledger)
        model = ledger.round(number)["model_id"]
        text, media = ws.annotator_fields(batch)
        tasks = label_studio_tasks(batch, round=number, class_names=cfg.class_names, id_col=cfg.cols.id, text=text,
                                   media=media, probs_col=cfg.cols.probs, model_version=model)
        config = labeling_config(cfg.class_names, text, media)
        title = str(project)[:TITLE_MAX]
        proj, created = client.project(project, create={"title": title, "label_config": config,
                                                        "description": f"broaden workspace {ws.path.resolve()}"})
        pid, where = proj["id"], f"project {proj['id']} ({proj.get('title')!r})"
        if not _same_config(proj.get("label_config") or "", config):
            client.request("PATCH", f"/api/projects/{pid}/", what=f"updating the labeling config of {where}",
                           json={"label_config": config})
        present = existing_tasks(client, pid, where)
        todo = [t for t in tasks if (str(t["data"][ITEM_ID]), number) not in present]
        uploaded = predictions = 0
        for start in range(0, len(todo), IMPORT_CHUNK):
            chunk = todo[start:start + IMPORT_CHUNK]
            body = client.request("POST", f"/api/projects/{pid}/import", json=chunk,
                                  what=f"uploading tasks {start + 1}-{start + len(chunk)} of {len(todo)} to {where} "
                                  "(re-run `broaden round push` to upload the rest: tasks already there are skipped)",
                                  params={"commit_to_project": "true"})
            uploaded += _imported(client, pid, where, body, len(chunk))
            predictions += int((body or {}).get("prediction_count") or 0)
        if proj.get("model_version") != model and any("predictions" in t for t in tasks):
            # Pre-label with this round's predictions; Label Studio accepts a version only once it has some.
            client.request("PATCH", f"/api/projects/{pid}/", what=f"setting the model version of {where}",
                           json={"model_version": model})
        ledger.set_meta({PUSHED_META.format(number): json.dumps({"url": client.shown, "project": pid})})
    return PushReport(client.shown, pid, proj.get("title", ""), created, number, len(tasks), uploaded,
                      len(tasks) - len(todo), predictions, time.perf_counter() - t0)


def _imported(client: Client, pid: int, where: str, body, expected: int) -> int:
    """Tasks stored by one import call. Label Studio Enterprise imports in the background and answers
    with an import id: wait (bounded) for it to finish."""
    if isinstance(body, dict) and "task_count" in body:
        return int(body["task_count"])
    if isinstance(body, dict) and "import" in body:
        for _ in range(600):
            state = client.request("GET", f"/api/projects/{pid}/imports/{body['import']}",
                                   what=f"waiting for import {body['import']} into {where}")
            status = (state or {}).get("status")
            if status == "completed":
                return int(state.get("task_count") or expected)
            if status == "failed":
                raise LabelStudioError(f"Label Studio at {client.shown}: import into {where} failed: "
                                       f"{state.get('error') or 'no reason given'}")
            client.sleep(1.0)
        raise LabelStudioError(f"Label Studio at {client.shown}: import into {where} did not finish in 10 minutes")
    raise LabelStudioError(f"Label Studio at {client.shown}: uploading to {where}: unexpected answer")


def existing_tasks(client: Client, pid: int, where: str) -> set[tuple[str, int | None]]:
    """(item id, round) of the tasks already in the project (task data only, no annotations)."""
    out = set()
    for page in client.pages("/api/tasks/", what=f"listing the tasks of {where}",
                             params={"project": pid, "resolve_uri": "false"}, key="tasks"):
        for task in page:
            data = task.get("data") or {}
            if data.get(ITEM_ID) is not None:
                out.add((str(data[ITEM_ID]), data.get(LS_ROUND)))
    return out


# ------------------------------------------------------------------------------------------ pull
def pull_tasks(client: Client, pid: int, where: str) -> list[dict]:
    """Every task of the project with its annotations, trimmed to what the import reads, in task-id order
    (so the same annotations always give the same digest)."""
    tasks = []
    for page in client.pages("/api/tasks/", what=f"reading the annotations of {where}",
                             params={"project": pid, "fields": "all", "resolve_uri": "false"}, key="tasks"):
        for t in page:
            data = t.get("data") or {}
            tasks.append({
                "id": t.get("id"),
                "data": {k: data[k] for k in (ITEM_ID, "id", LS_ROUND) if k in data},
                "annotations": [{k: a.get(k) for k in ("id", "completed_by", "result", "was_cancelled")}
                                for a in t.get("annotations") or [] if isinstance(a, dict)],
            })
    tasks.sort(key=lambda t: (t["id"] is None, t["id"] or 0))
    return tasks


def pull_round(ws: Workspace, *, url: str | None = None, project: int | str | None = None, strict: bool = False,
               client: Client | None = None) -> ImportReport:
    """Import the annotations of a Label Studio project, with the accounting of a file import."""
    with ws.ledger() as ledger:
        open_rounds = ledger.open_rounds()
        url, project = _target(ws, url, project, open_rounds[-1] if open_rounds else None, ledger)
    client = client or Client(url)
    proj, _ = client.project(project)
    pid, where = proj["id"], f"project {proj['id']} ({proj.get('title')!r})"
    tasks = pull_tasks(client, pid, where)
    text = json.dumps(tasks, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"label-studio:{client.shown}:{pid}\n{text}".encode()).hexdigest()
    source = f"{client.shown}/projects/{pid}"
    return import_parsed(ws, lambda: parse_annotations(Path("label-studio-api.json"), text,
                                                       class_names=ws.config.class_names, fmt="label-studio"),
                         source=source, digest=digest, strict=strict, pulled=True)


def _refused(exc: BaseException) -> bool:
    """Whether a requests ConnectionError is a refused (never made) connection."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or type(e).__name__ == "NewConnectionError":
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *[a for a in getattr(e, "args", ())
                                                                         if isinstance(a, BaseException)]]
    return False
