"""What annotators receive and send back: CSV, JSONL and Label Studio JSON.

Out (one round's batch): ``batch.csv`` and ``batch.jsonl`` (one row per item: id, round, the item's text
and media fields, the provenance that explains why it was sent, and empty ``label`` / ``annotator``
columns to fill in; CSV text cells are escaped against formula injection), ``tasks.json`` (Label Studio
tasks: ``data`` holds the item's id as ``item_id``, text and media fields and the provenance as
``broaden_*`` fields, which Label Studio shows as Data Manager columns; ``meta`` repeats the provenance;
``predictions`` holds the selecting model's class as a pre-annotation) and ``labeling_config.xml`` (a
single-choice Label Studio project over the workspace's class names).

In: the same CSV/JSONL with ``label`` filled (a class index or class name), a JSON list of such records,
or a Label Studio export (JSON tasks with ``annotations[].result[].value.choices``, or the flat CSV /
JSON_MIN rows). Ids are kept byte for byte. Parsing never stops at a bad row (only at CSV it cannot read
on): each one is returned with where it is, why it was rejected and its kind, for the summary.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pyarrow as pa

from broaden.io import write_text
from broaden.rounds.config import ConfigError

PROVENANCE = ("strategy", "score", "rank", "seed_id", "seed_ids", "neighbor_rank", "similarity", "lookalike_score",
              "relabel")
MEDIA_HINTS = ("image", "audio", "video", "frame", "media")
LS_FROM_NAME = "label"
FORMATS = ("auto", "csv", "jsonl", "json", "label-studio")
# The item id in Label Studio task data: not 'id', which Label Studio's CSV and JSON_MIN exports overwrite
# with their own task id.
ITEM_ID = "item_id"
LS_ANNOTATOR = "label-studio:"
# Provenance in task data gets this prefix: Data Manager columns that say where they come from and never
# collide with an item's own fields.
LS_PREFIX = "broaden_"
LS_ROUND = LS_PREFIX + "round"
LS_TASK_KEYS = frozenset({"data", "annotations", "completions"})
LS_FLAT_KEYS = frozenset({"annotation_id", "lead_time"})  # columns only Label Studio's flat exports have
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ID_ESCAPED = (*FORMULA_START, "'")
# Kinds of bad rows, counted in the import summary.
BAD_FILE, BAD_RECORD, NO_ID, BAD_LABEL = "unreadable file", "malformed row", "no usable id", "bad label"
NOT_SENT, FINISHED = "id never sent out", "round finished"


@dataclass(frozen=True)
class RawVote:
    """A label as read from a file, before it is checked against the ledger."""

    where: str
    item_id: str
    annotator: str | None
    label: int
    round: int | None = None  # the round a Label Studio task says it belongs to (data.broaden_round)


@dataclass(frozen=True)
class BadRow:
    where: str
    reason: str
    kind: str = BAD_RECORD

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ParsedFile:
    format: str
    votes: list[RawVote] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    unlabelled: int = 0


# ------------------------------------------------------------------------------------------ fields
def data_fields(schema: pa.Schema, *, id_col: str, text_fields: Sequence[str] | None,
                media_fields: Sequence[str] | None, skip: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(text fields, media fields) to show annotators. By default every string column that is not the id
    or provenance (or in ``skip``); media are the string columns whose name mentions image/audio/video/frame/media or ends
    in ``_path``/``_url``."""
    strings = [f.name for f in schema if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
               and f.name not in (id_col, ITEM_ID) and f.name not in PROVENANCE and f.name not in skip]
    for name in [*(text_fields or ()), *(media_fields or ())]:
        if name not in schema.names:
            raise ConfigError(f"field {name!r} (text_fields/media_fields) is not a pool column; "
                              f"columns: {', '.join(schema.names)}")

    def is_media(name: str) -> bool:
        low = name.lower()
        return low.endswith(("_path", "_url")) or any(h in low for h in MEDIA_HINTS)

    media = list(media_fields) if media_fields is not None else [n for n in strings if is_media(n)]
    text = list(text_fields) if text_fields is not None else [n for n in strings if n not in media]
    return text, media


def _plain(value):
    """JSON-safe scalar: NaN/inf become null (annotation tools reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------------------ export
def _records(batch: pa.Table, *, round: int, id_col: str, text: Sequence[str], media: Sequence[str]) -> list[dict]:
    prov = [c for c in PROVENANCE if c in batch.column_names]
    records = []
    for row in batch.select([id_col, *text, *media, *prov]).to_pylist():
        rec = {"id": row[id_col], "round": round}
        rec.update({f: row[f] for f in [*text, *media]})
        rec.update({p: _plain(row[p]) for p in prov})
        records.append(rec)
    return records


def label_studio_tasks(batch: pa.Table, *, round: int, class_names: Sequence[str], id_col: str,
                       text: Sequence[str], media: Sequence[str], probs_col: str | None = None,
                       model_version: str | None = None) -> list[dict]:
    """Label Studio tasks of one round: ``data`` (item id, fields, ``broaden_*`` provenance), ``meta`` (the
    provenance again, as earlier versions wrote it) and, when the batch has probabilities, the selecting
    model's class as a ``predictions`` entry (pre-annotation with ``model_version`` and its probability as
    ``score``, which Label Studio can sort and sample by)."""
    records = _records(batch, round=round, id_col=id_col, text=text, media=media)
    probs = None
    if probs_col and probs_col in batch.column_names:
        probs = batch.column(probs_col).to_pylist()
    to_name = label_studio_objects(text, media)[0]
    tasks = []
    for i, rec in enumerate(records):
        prov = {k: v for k, v in rec.items() if k not in ("id", *text, *media)}
        task = {"data": {ITEM_ID: rec["id"], **{f: rec[f] for f in [*text, *media]},
                         **{LS_PREFIX + k: v for k, v in prov.items()}},
                "meta": prov}
        p = probs[i] if probs is not None else None
        if p:
            best = max(range(len(p)), key=p.__getitem__)
            if best < len(class_names):
                task["predictions"] = [{
                    "model_version": model_version or "broaden", "score": _plain(float(p[best])),
                    "result": [{"from_name": LS_FROM_NAME, "to_name": to_name, "type": "choices",
                                "value": {"choices": [class_names[best]]}}],
                }]
        tasks.append(task)
    return tasks


def write_batch_exports(batch: pa.Table, out_dir: str | os.PathLike, *, round: int, class_names: Sequence[str],
                        id_col: str, text: Sequence[str], media: Sequence[str], probs_col: str | None = None,
                        model_version: str | None = None) -> dict[str, Path]:
    """Write the four annotator files of one round atomically; returns their paths by kind."""
    out = Path(out_dir)
    prov = [c for c in PROVENANCE if c in batch.column_names]
    records = _records(batch, round=round, id_col=id_col, text=text, media=media)

    flat_cols = ["id", "round", *text, *media, *prov, "label", "annotator"]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=flat_cols, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: csv_cell(json.dumps(v) if isinstance(v, list) else v, is_id=k == "id")
                         for k, v in rec.items()} | {"label": "", "annotator": ""})
    paths = {"csv": write_text(buf.getvalue(), out / "batch.csv")}
    jsonl = "".join(json.dumps(rec | {"label": None, "annotator": None}) + "\n" for rec in records)
    paths["jsonl"] = write_text(jsonl, out / "batch.jsonl")
    tasks = label_studio_tasks(batch, round=round, class_names=class_names, id_col=id_col, text=text, media=media,
                               probs_col=probs_col, model_version=model_version)
    paths["label-studio"] = write_text(json.dumps(tasks, indent=1) + "\n", out / "tasks.json")
    paths["label-studio-config"] = write_text(labeling_config(class_names, text, media), out / "labeling_config.xml")
    return paths


def label_studio_objects(text: Sequence[str], media: Sequence[str]) -> list[str]:
    """The object tags of the labeling config, in order (the choices and predictions point at the first)."""
    return [*media, *text] or [ITEM_ID]  # nothing to show but the id: still a valid project


def labeling_config(class_names: Sequence[str], text: Sequence[str], media: Sequence[str]) -> str:
    """A Label Studio labeling config: show the item's fields, pick exactly one class."""
    lines = ["<View>"]
    objects = label_studio_objects(text, media)
    for name in media:
        low = name.lower()
        tag = "Audio" if "audio" in low else "Video" if "video" in low else "Image"
        lines.append(f"  <{tag} name={quoteattr(name)} value={quoteattr('$' + name)}/>")
    for name in text:
        lines.append(f"  <Text name={quoteattr(name)} value={quoteattr('$' + name)}/>")
    if not (text or media):
        lines.append(f"  <Text name=\"{ITEM_ID}\" value=\"${ITEM_ID}\"/>")
    lines.append(f"  <Choices name={quoteattr(LS_FROM_NAME)} toName={quoteattr(objects[0])} choice=\"single\" "
                 "required=\"true\">")
    lines += [f"    <Choice value={quoteattr(c)}/>" for c in class_names]
    lines += ["  </Choices>", "</View>", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ import
_ASCII_INT = re.compile(r"-?[0-9]+")  # str.isdigit() also accepts '١' and '２', which are not class indices
_MAX_SHOWN = 40


def shown(value) -> str:
    """``repr(value)``, cut short: messages stay one readable line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 1] + "…"


def parse_label(value, class_names: Sequence[str]) -> int:
    """A class index (int or ASCII-digit string) or a class name → index; ValueError says what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is not a class")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text in class_names:
            return list(class_names).index(text)
        if not _ASCII_INT.fullmatch(text):
            raise ValueError(f"label {shown(value)} is neither a class index nor one of the class names "
                             f"{', '.join(class_names)}")
        value = int(text) if len(text) <= 18 else len(class_names)  # beyond any class; int() of huge text is slow
    if not isinstance(value, int):
        raise ValueError(f"label {shown(value)} is not a class index or name")
    if not 0 <= value < len(class_names):
        raise ValueError(f"label {shown(value)} is outside 0..{len(class_names) - 1}")
    return value


def _read_key(parsed: ParsedFile, where: str, item, missing: str) -> str | None:
    """The item's ledger key, or None after recording why the row has none."""
    try:
        if item is None or item == "":
            raise ValueError(missing)
        return _item_key(item)
    except ValueError as exc:
        parsed.bad.append(BadRow(where, str(exc), NO_ID))
        return None


def _item_key(value) -> str:
    """The ledger key of an item id read from a file: ``str(id)``, byte for byte (no stripping)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"id {shown(value)} must be a string or an integer")
    return str(value)


def csv_cell(value, *, is_id: bool = False):
    """A CSV cell that a spreadsheet will not run as a formula (OWASP): text starting with = + - @ tab or
    CR gets a leading ``'``. Id cells also escape a leading ``'`` so :func:`csv_id` can undo it exactly."""
    if isinstance(value, str) and value[:1] in (_ID_ESCAPED if is_id else FORMULA_START):
        return "'" + value
    return value


def csv_id(cell: str) -> str:
    """Undo :func:`csv_cell` on an id read from a CSV file (strips exactly the ``'`` it added)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in _ID_ESCAPED else cell


def detect_format(path: Path, text: str) -> str:
    """csv / jsonl / json from the extension, else the content; a JSON list of tasks is told apart after loading."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        return "jsonl"
    return "csv"


def parse_annotations(path: str | os.PathLike, text: str, *, class_names: Sequence[str], fmt: str = "auto",
                      id_field: str = "id") -> ParsedFile:
    """Read every label in a file; rows without a label are counted as unlabelled, bad rows collected."""
    p = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    auto = fmt == "auto"
    parsed = ParsedFile(format=detect_format(p, text) if auto else fmt)
    if parsed.format == "csv":
        _parse_csv(parsed, text, "\t" if p.suffix.lower() == ".tsv" else ",", class_names, id_field)
    elif parsed.format == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rec = _load_json(parsed, f"line {lineno}", line)
                if rec is not _INVALID:
                    _record_vote(parsed, f"line {lineno}", rec, class_names, id_field)
    else:
        doc = _load_json(parsed, "file", text)
        if doc is _INVALID:
            return parsed
        if not isinstance(doc, list):
            parsed.bad.append(BadRow("file", f"expected a JSON list of "
                                     f"{'tasks' if parsed.format == 'label-studio' else 'records'}", BAD_FILE))
            return parsed
        if auto and doc and isinstance(doc[0], dict) and LS_TASK_KEYS.intersection(doc[0]):
            parsed.format = "label-studio"
        for i, rec in enumerate(doc, start=1):
            if parsed.format == "label-studio":
                _ls_task(parsed, f"task {i}", rec, class_names)
            else:
                _record_vote(parsed, f"record {i}", rec, class_names, id_field)
    return parsed


_INVALID = object()


def _load_json(parsed: ParsedFile, where: str, text: str):
    try:
        return json.loads(text)
    except RecursionError:
        reason = "not valid JSON (nested too deeply)"
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts
        reason = f"not valid JSON ({getattr(exc, 'msg', None) or exc})"
    parsed.bad.append(BadRow(where, reason, BAD_FILE if where == "file" else BAD_RECORD))
    return _INVALID


def _parse_csv(parsed: ParsedFile, text: str, delimiter: str, class_names, id_field: str) -> None:
    # strict: an unbalanced quote is an error, not a field that silently swallows the rows after it.
    reader = csv.reader(_io.StringIO(text), delimiter=delimiter, strict=True)
    start = 1
    header: list[str] | None = None
    try:
        for row in reader:
            where, start = f"line {start}", reader.line_num + 1  # a quoted field may span lines: report its start
            if not row:
                continue
            if header is None:
                header = row
                if _is_ls_flat(header):
                    parsed.format = "label-studio-csv"
                elif id_field not in header or "label" not in header:
                    parsed.bad.append(BadRow("header", f"expected columns {id_field!r} and 'label', found "
                                             f"{', '.join(map(shown, header))} (is the delimiter "
                                             f"{delimiter!r}?)", BAD_FILE))
                    return
                continue
            if len(row) != len(header):
                parsed.bad.append(BadRow(where, f"{len(row)} field(s), the header has {len(header)} (an "
                                         "unbalanced quote or a stray delimiter?)", BAD_RECORD))
                continue
            rec = dict(zip(header, row))
            if parsed.format == "csv" and id_field in rec:
                rec[id_field] = csv_id(rec[id_field])
            _record_vote(parsed, where, rec, class_names, id_field)
    except csv.Error as exc:
        parsed.bad.append(BadRow(f"line {start}", f"not valid CSV ({exc}); the rest of the file was not read",
                                 BAD_FILE if header is None else BAD_RECORD))
    if header is None:
        parsed.bad.append(BadRow("header", "the file is empty", BAD_FILE))


def _is_ls_flat(fields) -> bool:
    return not LS_FLAT_KEYS.isdisjoint(fields)


def _record_vote(parsed: ParsedFile, where: str, rec, class_names, id_field: str) -> None:
    """One flat record: a row of broaden's CSV/JSONL/JSON, or of Label Studio's CSV / JSON_MIN export."""
    if not isinstance(rec, dict):
        parsed.bad.append(BadRow(where, "expected a JSON object", BAD_RECORD))
        return
    ls = _is_ls_flat(rec)
    if ls and parsed.format == "json":
        parsed.format = "label-studio-min"
    label = rec.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        parsed.unlabelled += 1
        return
    if ls and ITEM_ID not in rec:
        # Label Studio's flat exports put its own task id in 'id': reading it would label unrelated items.
        parsed.bad.append(BadRow(where, f"a Label Studio CSV/JSON_MIN row without {ITEM_ID!r}: its 'id' is Label "
                                 "Studio's task id, not the item id; import Label Studio's JSON export instead, or "
                                 f"tasks that carry data.{ITEM_ID} (broaden's tasks.json)", NO_ID))
        return
    field_name = ITEM_ID if ls else id_field
    key = _read_key(parsed, where, rec.get(field_name), f"no {field_name!r}")
    if key is None:
        return
    try:
        value = parse_label(label, class_names)
        annotator = _annotator(rec.get("annotator"), LS_ANNOTATOR if ls else "")
    except ValueError as exc:
        parsed.bad.append(BadRow(where, f"id {shown(key)}: {exc}", BAD_LABEL))
        return
    parsed.votes.append(RawVote(where, key, annotator, value))


def _annotator(value, prefix: str) -> str | None:
    """One identity per annotator and source: Label Studio's user ids and emails get ``label-studio:``
    whichever export format carried them (so the same votes from two formats count once)."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"annotator {shown(value)} must be a name or a user id")
    name = str(value).strip()
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    return f"{prefix}{name}" if name else None


def _ls_task(parsed: ParsedFile, where: str, task, class_names) -> None:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        parsed.bad.append(BadRow(where, "expected a task object with a 'data' object", BAD_RECORD))
        return
    meta = task.get("meta")
    if meta is not None and not isinstance(meta, dict):
        parsed.bad.append(BadRow(where, f"'meta' must be an object, found {shown(meta)}", BAD_RECORD))
        return
    # The item id is in the task's data (or meta), never Label Studio's own task 'id'.
    data, meta = task["data"], meta or {}
    item = next((v for v in (data.get(ITEM_ID), data.get("id"), meta.get(ITEM_ID)) if v is not None), None)
    key = _read_key(parsed, where, item, f"task has no data.{ITEM_ID} (the item id broaden exported)")
    if key is None:
        return
    annotations = task.get("annotations")
    if annotations is None:
        annotations = task.get("completions") or []  # Label Studio < 1.0 called them completions
    if not isinstance(annotations, list):
        parsed.bad.append(BadRow(where, f"'annotations' must be a list, found {shown(annotations)}", BAD_RECORD))
        return
    live = [a for a in annotations if not (isinstance(a, dict) and a.get("was_cancelled"))]
    if not live:
        parsed.unlabelled += 1
        return
    rnd = data.get(LS_ROUND)
    if rnd is not None and (isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 1):
        parsed.bad.append(BadRow(where, f"data.{LS_ROUND} {shown(rnd)} is not a round number", BAD_RECORD))
        return
    for j, ann in enumerate(live, start=1):
        here = f"{where} (id {shown(key)}) annotation {j}"
        try:
            value = parse_label(_ls_choice(ann), class_names)
            annotator = _annotator(_ls_user(ann.get("completed_by")), LS_ANNOTATOR)
        except ValueError as exc:
            parsed.bad.append(BadRow(here, str(exc), BAD_LABEL))
            continue
        parsed.votes.append(RawVote(here, key, annotator, value, rnd))


def _ls_choice(ann):
    """The one class chosen in an annotation (the ``label`` Choices when several are present)."""
    if not isinstance(ann, dict):
        raise ValueError(f"expected an annotation object, found {shown(ann)}")
    result = ann.get("result") or []
    if not isinstance(result, list):
        raise ValueError(f"'result' must be a list, found {shown(result)}")
    choices = [r for r in result if isinstance(r, dict) and isinstance(r.get("value"), dict)
               and "choices" in r["value"]]
    if len(choices) > 1:
        choices = [r for r in choices if r.get("from_name") == LS_FROM_NAME] or choices
    picked = [r["value"]["choices"] for r in choices]
    if any(not isinstance(c, list) for c in picked):
        raise ValueError(f"'choices' must be a list of class names, found {shown(picked[0])}")
    n = sum(len(c) for c in picked)
    if len(picked) != 1 or n != 1:
        raise ValueError(f"expected exactly one chosen class, found {n}")
    return picked[0][0]


def _ls_user(completed_by):
    # A user id, or a user object when the export expands users; its email is what the flat exports show.
    if isinstance(completed_by, dict):
        return completed_by.get("email") or completed_by.get("id")
    return completed_by
