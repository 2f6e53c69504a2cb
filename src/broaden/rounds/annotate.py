"""``round import``: bring annotators' labels into the ledger, validated, idempotent and all-or-nothing.

* A file whose SHA-256 is already in the ledger is not read again: re-importing changes nothing.
* Every label is checked: the id must belong to an open round, the label must be a class index in
  0..C−1 or a class name. Lenient (default): good rows go in, bad rows are reported (counted by kind,
  the first 20 with where and why). ``strict=True``: any bad row stops the import before anything is
  written. A file with no valid label is refused (:class:`ImportRejected`) and not recorded.
* All votes of one file go in one transaction with the file's digest, so a crash imports all or none.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from broaden.errors import BroadenError
from broaden.rounds.formats import FINISHED, NOT_SENT, BadRow, ParsedFile, parse_annotations, shown
from broaden.rounds.ledger import Vote
from broaden.rounds.workspace import Workspace

UNNAMED = "unnamed"
SHOW_BAD = 20
# Late labels already reported by a Label Studio pull (ledger meta): each is reported once, not on every pull.
LATE_REPORTED = "label_studio.late_reported"


class ImportRejected(BroadenError):
    """Nothing was imported: ``--strict`` met a bad row, or the file holds no valid label at all.
    The file is not recorded, so it can be fixed and imported again."""

    def __init__(self, path: str, bad: list[BadRow], *, strict: bool, unlabelled: int = 0):
        why = "--strict" if strict else "no valid label in the file"
        empty = f"; {unlabelled} row(s) without a label" if unlabelled else ""
        head, *rows = summarise(bad) if bad else [""]
        detail = f"; {head}: {'; '.join(rows)}" if bad else ""
        super().__init__(f"{path}: nothing imported ({why}){empty}{detail}")
        self.bad = bad


def summarise(bad: list[BadRow], limit: int = SHOW_BAD) -> list[str]:
    """``N bad row(s) (kind: n, …)``, then the first ``limit`` rows (where: why) and how many more: a
    million bad rows must not become a million lines."""
    kinds = Counter(b.kind for b in bad)
    head = f"{len(bad)} bad row(s) ({', '.join(f'{k}: {n}' for k, n in kinds.most_common())})"
    more = [f"… and {len(bad) - limit} more"] if len(bad) > limit else []
    return [head, *(str(b) for b in bad[:limit]), *more]


@dataclass(frozen=True)
class LateLabel:
    """A label for an item of a finished round that the ledger does not hold (given after ``finish``)."""

    where: str
    item_id: str
    round: int
    annotator: str
    label: int


@dataclass
class ImportReport:
    path: str
    format: str
    digest: str
    already_imported: bool = False
    labels: int = 0
    new: int = 0
    unlabelled: int = 0
    bad: list[BadRow] = field(default_factory=list)
    late: list[LateLabel] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.labels - self.new


def round_import(ws: Workspace, path: str | os.PathLike, *, strict: bool = False, fmt: str = "auto",
                 annotator: str | None = None) -> ImportReport:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise BroadenError(f"{p}: cannot read annotation file ({exc.strerror})") from exc
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BroadenError(f"{p}: not UTF-8 text (byte {exc.start})") from exc
    return import_parsed(ws, lambda: parse_annotations(p, text, class_names=ws.config.class_names, fmt=fmt,
                                                       id_field="id"),
                         source=str(p), digest=digest, strict=strict, annotator=annotator)


def import_parsed(ws: Workspace, parse, *, source: str, digest: str, strict: bool = False,
                  annotator: str | None = None, pulled: bool = False) -> ImportReport:
    """Validate parsed votes against the ledger and store them with ``digest``: the one accounting of a file
    import and a Label Studio pull. ``parse()`` runs only when the digest is new.

    ``pulled`` (a Label Studio pull, which sees every task of the project, earlier rounds included): votes
    on items of finished rounds that the ledger already holds are expected and silent; others are *late
    labels*, reported once (remembered in the ledger's meta), never as bad rows; a pull with nothing new
    and no bad row is not an error.
    """
    with ws.locked() as ledger:
        seen = ledger.find_import(digest)
        if seen is not None:
            return ImportReport(source, seen["format"], digest, already_imported=True, labels=seen["rows_ok"],
                                bad=[])
        parsed: ParsedFile = parse()
        # Rows naming no annotator are one unnamed annotator: a corrected file replaces, not doubles, its votes.
        default_annotator = annotator or UNNAMED
        sent = ledger.rounds_of(v.item_id for v in parsed.votes)
        latest = {(r["item_key"], r["round"], r["annotator"]): r["label"] for r in ledger.votes()} if pulled else {}
        votes, bad, late = [], list(parsed.bad), []
        for v in parsed.votes:
            rounds = sent.get(v.item_id)
            # A task that names its round (data.broaden_round) labels the item in that round, not in a later one.
            rnd = v.round if v.round is not None else max(rounds) if rounds else None
            who = v.annotator or default_annotator
            if not rounds:
                bad.append(BadRow(v.where, f"id {shown(v.item_id)} was never sent out in this workspace", NOT_SENT))
            elif rnd not in rounds:
                bad.append(BadRow(v.where, f"id {shown(v.item_id)} was not sent out in round {rnd}", NOT_SENT))
            elif rounds[rnd] == "open":
                votes.append(Vote(v.item_id, rnd, who, v.label))
            elif not pulled:
                bad.append(BadRow(v.where, f"id {shown(v.item_id)} belongs to round {rnd}, which is finished",
                                  FINISHED))
            elif latest.get((v.item_id, rnd, who)) != v.label:
                late.append(LateLabel(v.where, v.item_id, rnd, who, v.label))
        # A file is recorded only with the labels it stored: one that stored none can be fixed and re-imported.
        if (strict and bad) or (not votes and (bad or not pulled)):
            raise ImportRejected(source, bad, strict=strict and bool(bad), unlabelled=parsed.unlabelled)
        late = _first_report(ledger, late)
        new = 0
        if votes:
            new = ledger.add_import(digest=digest, path=source, fmt=parsed.format, votes=votes, rows_bad=len(bad))
    return ImportReport(source, parsed.format, digest, labels=len(votes), new=new, unlabelled=parsed.unlabelled,
                        bad=bad, late=late)


def _first_report(ledger, late: list[LateLabel]) -> list[LateLabel]:
    """The late labels not reported before; remembers them so the next pull does not repeat them."""
    if not late:
        return late
    done = set(json.loads(ledger.get_meta(LATE_REPORTED, "[]")))
    keys = [json.dumps([x.item_id, x.round, x.annotator, x.label]) for x in late]
    fresh = [x for x, k in zip(late, keys) if k not in done]
    if fresh:
        ledger.set_meta({LATE_REPORTED: json.dumps(sorted(done.union(keys)))})
    return fresh
