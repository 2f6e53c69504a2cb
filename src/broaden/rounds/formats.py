"""What annotators receive and send back: CSV, JSONL and Label Studio JSON.

Out (one round's batch): ``batch.csv`` and ``batch.jsonl`` (one row per item: id, round, the item's text
and media fields, the provenance that explains why it was sent, and empty ``label`` / ``annotator``
columns to fill in), ``tasks.json`` (Label Studio tasks: ``data`` holds the item's id, text and media
fields; ``meta`` holds the provenance) and ``labeling_config.xml`` (a single-choice Label Studio project
over the workspace's class names).

In: the same CSV/JSONL with ``label`` filled (a class index or class name), a JSON list of such records,
or a Label Studio export (tasks with ``annotations[].result[].value.choices``). Parsing never stops at a
bad row: each one is returned with where it is and why it was rejected.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pyarrow as pa

from broaden.io import write_text
from broaden.rounds.config import ConfigError

PROVENANCE = ("strategy", "score", "rank", "seed_id", "seed_ids", "neighbor_rank", "similarity", "lookalike_score")
MEDIA_HINTS = ("image", "audio", "video", "frame", "media")
LS_FROM_NAME = "label"
FORMATS = ("auto", "csv", "jsonl", "json", "label-studio")


@dataclass(frozen=True)
class RawVote:
    """A label as read from a file, before it is checked against the ledger."""

    where: str
    item_id: str
    annotator: str | None
    label: int


@dataclass(frozen=True)
class BadRow:
    where: str
    reason: str

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
               and f.name != id_col and f.name not in PROVENANCE and f.name not in skip]
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
def write_batch_exports(batch: pa.Table, out_dir: str | os.PathLike, *, round: int, class_names: Sequence[str],
                        id_col: str, text: Sequence[str], media: Sequence[str]) -> dict[str, Path]:
    """Write the four annotator files of one round atomically; returns their paths by kind."""
    out = Path(out_dir)
    prov = [c for c in PROVENANCE if c in batch.column_names]
    rows = batch.select([id_col, *text, *media, *prov]).to_pylist()
    records = []
    for row in rows:
        rec = {"id": row[id_col], "round": round}
        rec.update({f: row[f] for f in [*text, *media]})
        rec.update({p: _plain(row[p]) for p in prov})
        records.append(rec)

    flat_cols = ["id", "round", *text, *media, *prov, "label", "annotator"]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=flat_cols, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in rec.items()}
                        | {"label": "", "annotator": ""})
    paths = {"csv": write_text(buf.getvalue(), out / "batch.csv")}
    jsonl = "".join(json.dumps(rec | {"label": None, "annotator": None}) + "\n" for rec in records)
    paths["jsonl"] = write_text(jsonl, out / "batch.jsonl")
    tasks = [
        {"data": {"id": rec["id"], **{f: rec[f] for f in [*text, *media]}},
         "meta": {"round": round, **{p: rec[p] for p in prov}}}
        for rec in records
    ]
    paths["label-studio"] = write_text(json.dumps(tasks, indent=1) + "\n", out / "tasks.json")
    paths["label-studio-config"] = write_text(labeling_config(class_names, text, media), out / "labeling_config.xml")
    return paths


def labeling_config(class_names: Sequence[str], text: Sequence[str], media: Sequence[str]) -> str:
    """A Label Studio labeling config: show the item's fields, pick exactly one class."""
    lines = ["<View>"]
    objects = []
    for name in media:
        low = name.lower()
        tag = "Audio" if "audio" in low else "Video" if "video" in low else "Image"
        lines.append(f"  <{tag} name={quoteattr(name)} value={quoteattr('$' + name)}/>")
        objects.append(name)
    for name in text:
        lines.append(f"  <Text name={quoteattr(name)} value={quoteattr('$' + name)}/>")
        objects.append(name)
    if not objects:  # nothing to show but the id: still a valid project
        lines.append("  <Text name=\"id\" value=\"$id\"/>")
        objects.append("id")
    lines.append(f"  <Choices name={quoteattr(LS_FROM_NAME)} toName={quoteattr(objects[0])} choice=\"single\" "
                 "required=\"true\">")
    lines += [f"    <Choice value={quoteattr(c)}/>" for c in class_names]
    lines += ["  </Choices>", "</View>", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ import
def parse_label(value, class_names: Sequence[str]) -> int:
    """A class index (int or digit string) or a class name → index; ValueError says what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is not a class")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        if text in class_names:
            return list(class_names).index(text)
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            raise ValueError(f"label {value!r} is neither a class index nor one of the class names "
                             f"{', '.join(class_names)}")
    if not isinstance(value, int):
        raise ValueError(f"label {value!r} is not a class index or name")
    if not 0 <= value < len(class_names):
        raise ValueError(f"label {value} is outside 0..{len(class_names) - 1}")
    return value


def detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            first = json.loads(text)
        except json.JSONDecodeError:
            return "json"
        if first and isinstance(first[0], dict) and ("annotations" in first[0] or "data" in first[0]):
            return "label-studio"
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
    fmt = detect_format(p, text) if fmt == "auto" else fmt
    parsed = ParsedFile(format=fmt)
    if fmt == "csv":
        delimiter = "\t" if p.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(_io.StringIO(text), delimiter=delimiter)
        if reader.fieldnames is None or id_field not in reader.fieldnames or "label" not in reader.fieldnames:
            parsed.bad.append(BadRow("header", f"expected columns {id_field!r} and 'label', found "
                                     f"{', '.join(reader.fieldnames or [])}"))
            return parsed
        start = reader.line_num + 1  # a quoted field may span lines: report where the record begins
        for rec in reader:
            _record_vote(parsed, f"line {start}", rec, class_names, id_field)
            start = reader.line_num + 1
    elif fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            _json_record(parsed, f"line {lineno}", line, class_names, id_field)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            parsed.bad.append(BadRow("file", f"not valid JSON ({exc})"))
            return parsed
        if not isinstance(doc, list):
            parsed.bad.append(BadRow("file", f"expected a JSON list of {'tasks' if fmt == 'label-studio' else 'records'}"))
            return parsed
        for i, rec in enumerate(doc, start=1):
            if fmt == "label-studio":
                _ls_task(parsed, i, rec, class_names)
            elif isinstance(rec, dict):
                _record_vote(parsed, f"record {i}", rec, class_names, id_field)
            else:
                parsed.bad.append(BadRow(f"record {i}", "expected a JSON object"))
    return parsed


def _json_record(parsed: ParsedFile, where: str, line: str, class_names, id_field) -> None:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        parsed.bad.append(BadRow(where, f"not valid JSON ({exc.msg})"))
        return
    if not isinstance(rec, dict):
        parsed.bad.append(BadRow(where, "expected a JSON object"))
        return
    _record_vote(parsed, where, rec, class_names, id_field)


def _record_vote(parsed: ParsedFile, where: str, rec: dict, class_names, id_field: str) -> None:
    label = rec.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        parsed.unlabelled += 1
        return
    item = rec.get(id_field)
    if item is None or (isinstance(item, str) and not item.strip()):
        parsed.bad.append(BadRow(where, f"no {id_field!r}"))
        return
    try:
        value = parse_label(label, class_names)
    except ValueError as exc:
        parsed.bad.append(BadRow(where, f"id {_key(item)!r}: {exc}"))
        return
    annotator = rec.get("annotator")
    annotator = str(annotator).strip() if annotator not in (None, "") else None
    parsed.votes.append(RawVote(where, _key(item), annotator or None, value))


def _ls_task(parsed: ParsedFile, index: int, task, class_names) -> None:
    where = f"task {index}"
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        parsed.bad.append(BadRow(where, "expected a task object with a 'data' object"))
        return
    item = task["data"].get("id")
    if item is None:
        item = (task.get("meta") or {}).get("item_id")
    if item is None:
        parsed.bad.append(BadRow(where, "task has no data.id (the item id broaden exported)"))
        return
    annotations = task.get("annotations")
    if annotations is None:
        annotations = task.get("completions") or []  # Label Studio < 1.0 called them completions
    live = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not live:
        parsed.unlabelled += 1
        return
    for j, ann in enumerate(live, start=1):
        here = f"{where} (id {_key(item)!r}) annotation {j}"
        choices = [r for r in ann.get("result") or [] if isinstance(r, dict)
                   and isinstance(r.get("value"), dict) and "choices" in r["value"]]
        if len(choices) > 1:
            choices = [r for r in choices if r.get("from_name") == LS_FROM_NAME] or choices
        if len(choices) != 1 or len(choices[0]["value"]["choices"]) != 1:
            n = sum(len(r["value"]["choices"]) for r in choices)
            parsed.bad.append(BadRow(here, f"expected exactly one chosen class, found {n}"))
            continue
        try:
            value = parse_label(choices[0]["value"]["choices"][0], class_names)
        except ValueError as exc:
            parsed.bad.append(BadRow(here, str(exc)))
            continue
        parsed.votes.append(RawVote(here, _key(item), _ls_annotator(ann.get("completed_by")), value))


def _ls_annotator(completed_by) -> str | None:
    # Exports hold a user id, or a user object when the export expands users.
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return None if completed_by in (None, "") else f"label-studio:{completed_by}"


def _key(item) -> str:
    if isinstance(item, float) and item.is_integer():
        item = int(item)
    return str(item).strip()
