"""An annotation workspace: a folder with the config, the SQLite ledger and one sub-folder per round.

Layout::

    WORKSPACE/config.yaml                 settings (docs/rounds.md)
    WORKSPACE/ledger.sqlite               the ledger (WAL mode; -wal/-shm files beside it)
    WORKSPACE/rounds/0001/batch.parquet   the selected rows: pool columns + strategy, score, provenance
    WORKSPACE/rounds/0001/export/         batch.csv, batch.jsonl, tasks.json, labeling_config.xml
    WORKSPACE/rounds/0001/pool.scored.parquet   only when the pool came without probabilities
    WORKSPACE/models/round-0001/          the classifier trained by ``round finish``

Every command that changes the workspace holds an exclusive ``flock`` on ``WORKSPACE/.lock`` (released
by the kernel when the process dies), so two commands never interleave and a crash never leaves it held.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from broaden import io
from broaden.errors import BroadenError, ScoredTableError
from broaden.rounds.config import ConfigError, WorkspaceConfig, dump_config, load_config
from broaden.rounds.formats import data_fields, write_batch_exports
from broaden.rounds.ledger import Ledger, now
from broaden.rounds.resolve import Consensus, MissingProbabilities, resolve_crowdlab, resolve_votes
from broaden.rounds.schema import LedgerError

CONFIG_FILE = "config.yaml"
LEDGER_FILE = "ledger.sqlite"
EMBEDDING_VERSION_KEY = b"broaden.embedding_version"
MODEL_ID_KEY = b"broaden.model_id"
UNVERSIONED = "unversioned"
EXPORT_FILES = ("batch.csv", "batch.jsonl", "tasks.json", "labeling_config.xml")


class WorkspaceError(BroadenError):
    """The workspace is missing, already exists, or a request does not fit its state."""


class EvaluationLeakError(WorkspaceError):
    """Items of the evaluation table would be selected for labelling or trained on."""


Selector = Callable[..., pa.Table]
ClassifierFactory = Callable[[WorkspaceConfig], object]


class Workspace:
    """A workspace folder. ``selector`` and ``classifier_factory`` default to :func:`broaden.select.select`
    and :class:`broaden.models.classifier.EmbeddingClassifier`; a team can plug in its own."""

    def __init__(self, path: str | os.PathLike, *, selector: Selector | None = None,
                 classifier_factory: ClassifierFactory | None = None):
        self.path = Path(path)
        if not (self.path / LEDGER_FILE).exists():
            raise WorkspaceError(f"{self.path}: not a broaden workspace (no {LEDGER_FILE}); run `broaden init` first")
        self.config = load_config(self.path / CONFIG_FILE)
        self._selector = selector
        self._classifier_factory = classifier_factory

    # --------------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | os.PathLike, config: WorkspaceConfig, *, staged: dict[str, Path] | None = None,
               **kwargs) -> Workspace:
        """A new workspace; ``staged`` moves already-written files in (destination relative to the root ->
        file on the same file system), before the config that names them."""
        root = Path(path)
        if (root / LEDGER_FILE).exists():
            raise WorkspaceError(f"{root}: already a workspace (found {LEDGER_FILE}); nothing changed")
        if root.exists() and any(p for p in root.iterdir() if p.name != ".lock"):
            raise WorkspaceError(f"{root}: folder exists and is not empty; choose a new folder for the workspace")
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            for dest, src in (staged or {}).items():
                (root / dest).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, root / dest)
            io.write_text(dump_config(config), root / CONFIG_FILE)
            # The ledger is created last: its presence is what marks a finished init.
            tmp = root / f".{LEDGER_FILE}.init"
            tmp.unlink(missing_ok=True)
            with Ledger.open(tmp, create=True) as ledger:
                ledger.set_meta({"created_at": now(), "config": json.dumps(config.to_dict())})
                ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                ledger.conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to rename
            os.replace(tmp, root / LEDGER_FILE)
            io._fsync_dir(root)
        return cls(root, **kwargs)

    # ------------------------------------------------------------------------------------ state
    @contextlib.contextmanager
    def ledger(self) -> Iterator[Ledger]:
        with Ledger.open(self.path / LEDGER_FILE) as ledger:
            yield ledger

    @contextlib.contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Exclusive access for a mutating command; repairs what an earlier crash left half done."""
        with _locked(self.path), self.ledger() as ledger:
            self.repair(ledger)
            yield ledger

    def open_round(self, ledger: Ledger, number: int | None, action: str) -> int:
        """``number`` (default: the latest open round), refused unless that round is open."""
        open_rounds = ledger.open_rounds()
        if not open_rounds:
            raise WorkspaceError(f"{self.path}: no open round to {action}; start one with `broaden round start`")
        number = open_rounds[-1] if number is None else number
        if number not in open_rounds:
            raise WorkspaceError(f"{self.path}: round {number} is not open (open: {', '.join(map(str, open_rounds))})")
        return number

    def round_dir(self, number: int) -> Path:
        return self.path / "rounds" / f"{number:04d}"

    def batch_path(self, number: int) -> Path:
        return self.round_dir(number) / "batch.parquet"

    def export_dir(self, number: int) -> Path:
        return self.round_dir(number) / "export"

    def repair(self, ledger: Ledger) -> list[Path]:
        """Re-create the annotator files of open rounds that a crash after the ledger commit left unwritten.

        The batch file is written before the round is committed, so it always exists for a recorded
        round; its ids are checked against the ledger before anything is derived from it.
        """
        written: list[Path] = []
        for number in ledger.open_rounds():
            if all((self.export_dir(number) / f).exists() for f in EXPORT_FILES):
                continue
            batch = self.read_batch(number, ledger)
            written += list(self.write_exports(number, batch, model_version=ledger.round(number)["model_id"]).values())
        return written

    def read_batch(self, number: int, ledger: Ledger | None = None) -> pa.Table:
        path = self.batch_path(number)
        if not path.exists():
            raise LedgerError(f"{path}: batch file of round {number} is missing; the ledger records it")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise LedgerError(f"{path}: batch file of round {number} is unreadable ({io.one_line(exc)}); the "
                              "ledger records the round, so restore the file from a backup") from exc
        if ledger is not None:
            want = sorted(r["item_key"] for r in ledger.items(number))
            have = sorted(key_strings(table.column(self.config.cols.id)))
            if want != have:
                raise LedgerError(f"{path}: ids differ from the ledger's round {number} "
                                  f"({len(have)} in the file, {len(want)} in the ledger)")
        return table

    def annotator_fields(self, batch: pa.Table) -> tuple[list[str], list[str]]:
        """(text fields, media fields) of a batch that annotators see."""
        cfg = self.config
        return data_fields(batch.schema, id_col=cfg.cols.id, text_fields=cfg.text_fields,
                           media_fields=cfg.media_fields, skip=(cfg.embedding_version_col,))

    def write_exports(self, number: int, batch: pa.Table, *, model_version: str | None = None) -> dict[str, Path]:
        cfg = self.config
        text, media = self.annotator_fields(batch)
        return write_batch_exports(batch, self.export_dir(number), round=number, class_names=cfg.class_names,
                                   id_col=cfg.cols.id, text=text, media=media, probs_col=cfg.cols.probs,
                                   model_version=model_version)

    # --------------------------------------------------------------------------- plug-in points
    def select(self, *args, **kwargs) -> pa.Table:
        if self._selector is None:
            from broaden.select import select

            self._selector = select
        return self._selector(*args, **kwargs)

    def new_classifier(self):
        if self._classifier_factory is not None:
            return self._classifier_factory(self.config)
        from broaden.models.classifier import EmbeddingClassifier

        return EmbeddingClassifier(**{"seed": self.config.seed, **self.config.classifier})

    def load_classifier(self, path: Path):
        if self._classifier_factory is not None:
            return type(self._classifier_factory(self.config)).load(path)
        from broaden.models.classifier import EmbeddingClassifier

        return EmbeddingClassifier.load(path)

    def current_model(self, ledger: Ledger) -> dict | None:
        """The classifier that scores unscored pools: the last one ``round finish`` trained, else the
        config's ``model``. A dict with path, id and the embedding version it was trained on."""
        for row in reversed(ledger.rounds()):
            model = json.loads(row["metrics"] or "{}").get("model")
            if model and model.get("path"):
                return model | {"path": str(self.path / model["path"])}
        if self.config.model:
            path = Path(self.config.model)
            return {"path": str(path), "id": self.config.model_id or model_id(path),
                    "embedding_version": self.config.embedding_version or UNVERSIONED}
        return None

    # --------------------------------------------------------------------------------- labelled
    def table_keys(self, setting: str) -> set[str]:
        """The ledger keys of the ids in the config's ``labeled`` or ``eval`` table (empty when unset)."""
        path = getattr(self.config, setting)
        return table_keys(path, self.config.cols.id, setting) if path else set()

    def excluded_keys(self, ledger: Ledger) -> set[str]:
        """Keys ``round start`` never selects: open-round or ever-labelled items (the ledger), the initial
        labelled table and the evaluation table (selecting those would leak them into training)."""
        return ledger.blocked_keys() | self.table_keys("labeled") | self.table_keys("eval")

    def resolve(self, ledger: Ledger) -> Consensus:
        """Every voted item's label under the config's ``label_resolution``: majority vote, or CROWDLAB
        weighing the annotators against the probabilities each item was selected with (out-of-sample)."""
        votes = ledger.votes()
        if self.config.label_resolution != "crowdlab":
            return Consensus("majority", resolve_votes(votes))
        try:  # before CROWDLAB applies (one annotator, single votes) it is the majority vote, probabilities or not
            return resolve_crowdlab(votes, self.selection_probs({int(v["round"]) for v in votes}))
        except MissingProbabilities as exc:
            raise WorkspaceError(f"label_resolution crowdlab needs the model's probabilities of every voted item; "
                                 f"{self.batch_path(exc.round)} has none for {exc.key!r}; use label_resolution "
                                 f"majority") from None

    def selection_probs(self, rounds) -> dict[tuple[str, int], np.ndarray]:
        """{(item_key, round): the probabilities the item was selected with} for the items of ``rounds``."""
        cols, out = self.config.cols, {}
        for rnd in sorted(rounds):
            batch = self.read_batch(rnd)
            if cols.probs in batch.column_names:
                out.update(((k, rnd), p) for k, p in zip(key_strings(batch.column(cols.id)), matrix(batch, cols.probs)))
        return out

    def labeled_table(self, ledger: Ledger, *, include_initial: bool = True, scored: bool = False,
                      consensus: Consensus | None = None) -> pa.Table:
        """Everything labelled so far: the config's initial labelled table plus every workspace item whose
        votes resolve to a label (:meth:`resolve`; majority-vote ties left out). Columns: id (as text), label,
        probs (as scored when selected: out-of-sample), embedding, embedding_version, round, strategy.
        ``scored`` keeps only rows with probabilities (what seeds and the error-clustering diagnostic need).
        ``consensus``: :meth:`resolve`'s result when the caller already has it for this ledger."""
        cfg, cols = self.config, self.config.cols
        resolved = (consensus or self.resolve(ledger)).items
        parts = []
        by_round: dict[int, dict[str, int]] = {}
        # An item relabelled in a later round is one labelled item: its row from the round that first sent it
        # (the probabilities it was first selected with are the out-of-sample ones).
        first: set[str] = set()
        for (key, rnd), res in sorted(resolved.items(), key=lambda kv: kv[0][1]):
            if res.label is not None and key not in first:
                first.add(key)
                by_round.setdefault(rnd, {})[key] = res.label
        for rnd in sorted(by_round):
            batch = self.read_batch(rnd)
            keys = key_strings(batch.column(cols.id))
            labels = by_round[rnd]
            take = [i for i, k in enumerate(keys) if k in labels]
            sub = batch.take(pa.array(take, pa.int64()))
            version = ledger.round(rnd)["embedding_version"]
            parts.append(_labeled_part(sub, [labels[keys[i]] for i in take], cols, version, rnd, cfg.num_classes))
        if include_initial and cfg.labeled:
            init = io.read_table(cfg.labeled, validator=io.Validator(
                columns=cols, require=("id", "label", "embedding"), num_classes=cfg.num_classes))
            keep = io.labels_array(init.column(cols.label)) >= 0
            init = init.filter(pa.array(keep))
            version = embedding_version(cfg.labeled, init, cfg)
            parts.append(_labeled_part(init, io.labels_array(init.column(cols.label)).tolist(), cols, version, 0,
                                       cfg.num_classes))
        if not parts:
            return _labeled_schema(cols).empty_table()
        table = pa.concat_tables(parts, promote_options="default")
        return table.filter(pc.is_valid(table.column(cols.probs))) if scored else table


# ------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another broaden command on {root} to finish …", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refuse_eval_ids(cfg: WorkspaceConfig, keys, what: str) -> None:
    """Refuse ``keys`` that are ids of the evaluation table: metrics on trained-on items are worthless."""
    leaked = sorted(table_keys(cfg.eval, cfg.cols.id, "eval").intersection(keys)) if cfg.eval else []
    if leaked:
        shown = ", ".join(map(repr, leaked[:5])) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
        raise EvaluationLeakError(
            f"{what} {len(leaked)} id(s) of the evaluation table {cfg.eval}: {shown}; evaluation items must "
            "never be labelled for training: remove them from the labelled data (or from the evaluation table)"
        )


def table_keys(path, id_col: str, what: str) -> set[str]:
    """Ledger keys of the ids in a Parquet table (reads only the id column)."""
    try:
        return set(key_strings(io.read_table(path, columns=[id_col]).column(id_col)))
    except (ScoredTableError, pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{what} table {path}: not readable ({exc})") from exc


def key_strings(arr: pa.Array | pa.ChunkedArray) -> list[str]:
    """The ledger's text key of each id (``str(id)``), for integer and string id columns alike."""
    return [str(v) for v in io._combine(arr).to_pylist()]


def _labeled_schema(cols: io.Columns) -> pa.Schema:
    return pa.schema([(cols.id, pa.string()), (cols.label, pa.int64()), (cols.probs, pa.list_(pa.float32())),
                      (cols.embedding, pa.list_(pa.float32())), ("embedding_version", pa.string()),
                      ("round", pa.int64()), ("strategy", pa.string())])


def _labeled_part(table: pa.Table, labels: list[int], cols: io.Columns, version: str, rnd: int,
                  num_classes: int) -> pa.Table:
    n = table.num_rows
    probs = (table.column(cols.probs).cast(pa.list_(pa.float32())) if cols.probs in table.column_names
             else pa.nulls(n, pa.list_(pa.float32())))
    strategy = table.column("strategy") if "strategy" in table.column_names else pa.array(["initial"] * n)
    return pa.table({
        cols.id: pa.array(key_strings(table.column(cols.id)), pa.string()),
        cols.label: pa.array(labels, pa.int64()),
        cols.probs: probs,
        cols.embedding: table.column(cols.embedding).cast(pa.list_(pa.float32())),
        "embedding_version": pa.array([version] * n, pa.string()),
        "round": pa.array([rnd] * n, pa.int64()),
        "strategy": strategy.cast(pa.string()),
    }, schema=_labeled_schema(cols))


def embedding_version(path, table_or_none, cfg: WorkspaceConfig) -> str:
    """The embedding version of a table: its ``embedding_version`` column (one value only), else its
    Parquet metadata ``broaden.embedding_version``, else the config's ``embedding_version``."""
    col = cfg.embedding_version_col
    source = io.Pool.of(path) if path is not None else None  # a path or a table, through the one loader
    schema = source.schema if source is not None else table_or_none.schema
    if col in schema.names:
        if table_or_none is not None and col in table_or_none.column_names:
            values = pc.unique(table_or_none.column(col)).to_pylist()
        else:
            values = sorted({v for b in source.stream([col]) for v in pc.unique(b.column(0)).to_pylist()}, key=str)
        values = [v for v in values if v is not None]
        if len(values) > 1:
            raise WorkspaceError(
                f"{path}: column {col!r} mixes embedding versions {', '.join(map(str, values))}; one kNN "
                "search must use one embedding model — re-embed the items with a single version"
            )
        if values:
            return str(values[0])
    meta = schema.metadata or {}
    if EMBEDDING_VERSION_KEY in meta:
        return meta[EMBEDDING_VERSION_KEY].decode()
    return cfg.embedding_version or UNVERSIONED


def model_id(path: Path) -> str:
    """``<folder name>@<first 12 hex of the SHA-256 over its files>``: changes whenever the weights do."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return f"{Path(path).name}@{h.hexdigest()[:12]}"


def matrix(table: pa.Table, column: str) -> np.ndarray:
    return io.list_matrix(table.column(column), dtype=np.float32)


def require_config(value, name: str, what: str) -> str:
    if not value:
        raise ConfigError(f"no {name} given: {what}")
    return value
