"""``round start``: score the pool if needed, select a batch, record it, write the annotator files.

Order of effects, chosen so a crash at any point leaves a workspace the next command accepts:
1. (only if the pool has no probabilities) write ``rounds/NNNN/pool.scored.parquet`` atomically;
2. (only with a relabelling strategy) write ``rounds/NNNN/pool-relabel/``: links to the pool's files plus
   the labelled items that may be sent again, atomically;
   write ``rounds/NNNN/batch.parquet`` atomically — harmless if the round is never committed, since the
   next start reuses the number and replaces the file;
3. one ledger transaction records the round and all its items;
4. write the annotator files; if the process dies before this, the next command re-creates them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broaden import io
from broaden.errors import ScoredTableError
from broaden.rounds.ledger import ItemRecord, Ledger, fault_point
from broaden.rounds.values import auto_options, is_auto
from broaden.rounds.workspace import (
    MODEL_ID_KEY, Workspace, WorkspaceError, embedding_version, key_strings, matrix, require_config,
)


@dataclass
class RoundStart:
    round: int
    selected: int
    pool: str
    model_id: str
    embedding_version: str
    scored_pool: str | None
    exports: dict[str, Path] = field(default_factory=dict)
    by_strategy: dict[str, int] = field(default_factory=dict)
    allocation: dict | None = None    # --strategy auto: shares per arm, the reasons and the diagnosis


def round_start(ws: Workspace, pool: str | os.PathLike | None = None, *, budget: int | None = None,
                strategy: str | None = None, seed: int | None = None, engine=None) -> RoundStart:
    cfg, cols = ws.config, ws.config.cols
    pool = str(require_config(pool or cfg.pool, "pool",
                              "pass --pool POOL (a scored Parquet file or folder) or set 'pool' in the config"))
    budget = cfg.budget if budget is None else budget
    strategy = strategy or cfg.strategy
    with ws.locked() as ledger:
        number = ledger.next_round()
        schema = io.read_schema(pool)
        if cols.embedding not in schema.names:  # refuse now, not at `round finish` after the labelling work
            raise WorkspaceError(
                f"{pool}: the pool has no {cols.embedding!r} column; `round finish` trains the classifier on "
                f"embeddings, so every pool item needs one; score it first: `broaden score --model RUN "
                f"--data {pool} --out SCORED.parquet`, then pass --pool SCORED.parquet"
            )
        version = embedding_version(pool, None, cfg)
        scored_pool = None
        if cols.probs not in schema.names:
            pool, model = _score_pool(ws, ledger, pool, number, version, schema)
            scored_pool = pool
        else:
            model = (schema.metadata or {}).get(MODEL_ID_KEY, b"").decode() or cfg.model_id or "external"
            _check_class_count(pool, cols, cfg.class_names)
        labeled = _labeled_for(ws, ledger, strategy, version, pool)
        run_seed = (cfg.seed if seed is None else seed) + number
        excluded = ws.excluded_keys(ledger)
        options = {"seed_threshold": cfg.seed_threshold, "k": cfg.k, "lookalike_threshold": cfg.lookalike_threshold,
                   "max_seeds": cfg.max_seeds, "discrepancy": cfg.discrepancy, **cfg.select_options}
        if _relabels(strategy):  # labelled items may go out again: they join the pool, with their votes
            pool, options["annotations"], again = _relabel_pool(ws, ledger, pool, number, version)
            excluded = excluded - again
        allocation = None
        if is_auto(strategy):
            batch, reports = ws.select(pool, strategy, budget, exclude=sorted(excluded), seed=run_seed,
                                       labeled=labeled, columns=cols, engine=engine, return_details=True,
                                       **options, **auto_options(ledger))
            allocation = _allocation_record(reports["auto"])
            io.write_text(json.dumps(allocation, indent=2), ws.round_dir(number) / "allocation.json")
        else:
            batch = ws.select(pool, strategy, budget, exclude=sorted(excluded), seed=run_seed, labeled=labeled,
                              columns=cols, engine=engine, **options)
        items = _item_records(batch, excluded, cols, pool)
        batch = batch.append_column("round", pa.array([number] * batch.num_rows, pa.int64()))
        io.write_table(batch, ws.batch_path(number))
        fault_point("round-start:batch-written")
        ledger.add_round(round=number, pool=str(pool), strategy=strategy, budget=int(budget), seed=run_seed,
                         model_id=model, embedding_version=version, items=items)
        if allocation is not None:
            ledger.set_meta({f"allocation:{number}": json.dumps(allocation)})
        fault_point("round-start:committed")
        exports = ws.write_exports(number, batch, model_version=model)
    counts = pc.value_counts(batch.column("strategy")).to_pylist()
    return RoundStart(number, batch.num_rows, str(pool), model, version, scored_pool, exports,
                      {c["values"]: c["counts"] for c in counts}, allocation)


def _score_pool(ws: Workspace, ledger: Ledger, pool: str, number: int, version: str, schema: pa.Schema):
    cols = ws.config.cols
    model = ws.current_model(ledger)
    if model is None:
        raise WorkspaceError(
            f"{pool}: the pool has embeddings but no {cols.probs!r}, and the workspace has no classifier yet; "
            "set 'model' in the config, finish a round, or score the pool with `broaden score`"
        )
    if model["embedding_version"] != version:
        raise WorkspaceError(
            f"{pool}: embedding version {version!r} differs from {model['embedding_version']!r}, which the "
            f"classifier {model['id']} was trained on; re-embed the pool with that version"
        )
    clf = ws.load_classifier(Path(model["path"]))
    out = ws.round_dir(number) / "pool.scored.parquet"
    validator = io.Validator(columns=cols, require=("id", "embedding"))
    out_schema = schema.append(pa.field(cols.probs, pa.list_(pa.float32())))
    out_schema = out_schema.with_metadata({**(schema.metadata or {}), MODEL_ID_KEY: model["id"].encode()})
    from broaden.progress import track

    with io.ParquetStreamWriter(out, out_schema) as writer, track("scoring pool", io.count_rows(pool)) as advance:
        for b in io.iter_batches(pool, validator=validator):
            t = pa.Table.from_batches([b])
            probs = np.asarray(clf.predict_proba(matrix(t, cols.embedding)), np.float32)
            if probs.shape[1] != ws.config.num_classes:
                raise WorkspaceError(f"classifier {model['id']} predicts {probs.shape[1]} classes, the workspace "
                                     f"has {ws.config.num_classes} class names; use a classifier trained on them")
            writer.write(t.append_column(out_schema.field(cols.probs), io.matrix_to_list_array(probs)))
            advance(b.num_rows)
    return str(out), model["id"]


def _relabels(strategy: str) -> bool:
    from broaden.select import parse_spec
    from broaden.select.registry import get_strategy

    return not is_auto(strategy) and any(get_strategy(name).relabels for name, _ in parse_spec(strategy))


def _relabel_pool(ws: Workspace, ledger: Ledger, pool: str, number: int, version: str
                  ) -> tuple[str, pa.Table, set[str]]:
    """(the pool plus the items that may be relabelled, their votes, their keys).

    Candidates are the voted items of rounds no longer open, embedded in the pool's version, with the row of
    the last round that sent them and fresh probabilities from the workspace's classifier (so new and
    relabelled items are scored by one model). The combined pool is ``rounds/NNNN/pool-relabel/``: links to
    the pool's files (nothing copied) and ``relabel.parquet``, cast to the pool's schema."""
    from broaden.rounds.resolve import pooled_votes

    cols = ws.config.cols
    latest, rounds = pooled_votes(ledger.votes())
    busy = ledger.open_keys()
    versions = {r["round"]: r["embedding_version"] for r in ledger.rounds()}
    again = sorted(k for k, voted in rounds.items() if k not in busy and versions[voted[-1]] == version)
    votes = pa.table({"id": [k for k in again for _ in latest[k]], "annotator": [a for k in again for a in latest[k]],
                      "label": pa.array([v for k in again for v in latest[k].values()], pa.int64())})
    # An item the pool collected again is relabelled from its pool row; the others join from their batches.
    in_pool = io.Pool.of(pool, cols).contains(np.asarray(again, dtype=str)) if again else np.zeros(0, bool)
    by_round: dict[int, set[str]] = {}
    for key, present in zip(again, in_pool):
        if not present:
            by_round.setdefault(rounds[key][-1], set()).add(key)
    if not by_round:
        return pool, votes, set(again)
    schema = io.read_schema(pool)
    parts = []
    for rnd, keys in sorted(by_round.items()):
        batch = ws.read_batch(rnd)
        take = [i for i, k in enumerate(key_strings(batch.column(cols.id))) if k in keys]
        parts.append(_pool_rows(batch.take(pa.array(take, pa.int64())), schema, cols))
    rows = pa.concat_tables(parts)
    model = ws.current_model(ledger)
    if model is not None and model["embedding_version"] == version:
        probs = np.asarray(ws.load_classifier(Path(model["path"])).predict_proba(matrix(rows, cols.embedding)))
        rows = rows.set_column(rows.schema.get_field_index(cols.probs), schema.field(cols.probs),
                               io.matrix_to_list_array(probs.astype(np.float32)).cast(schema.field(cols.probs).type))
    with io.atomic_dir(ws.round_dir(number) / "pool-relabel") as tmp:
        for i, f in enumerate(io.parquet_files(pool)):
            os.symlink(Path(f).resolve(), tmp / f"pool-{i:05d}.parquet")
        io.write_table(rows, tmp / "relabel.parquet")
    return str(ws.round_dir(number) / "pool-relabel"), votes, set(again)


def _pool_rows(batch: pa.Table, schema: pa.Schema, cols: io.Columns) -> pa.Table:
    """Batch rows as rows of a pool with ``schema``: its columns (``pool_<name>`` where selection renamed one),
    the label left empty (the votes are the labels), columns the batch lacks as nulls."""
    arrays = []
    for f in schema:
        # Where selection kept the pool's column as pool_<name>, <name> is selection's provenance.
        name = f"pool_{f.name}" if f"pool_{f.name}" in batch.column_names else f.name
        if f.name == cols.label or name not in batch.column_names:
            arrays.append(pa.nulls(batch.num_rows, f.type))
        else:
            arrays.append(batch.column(name).cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _allocation_record(report: dict) -> dict:
    alloc, diagnosis = report["allocation"], report["diagnosis"]
    return {"shares": alloc.shares, "reasons": alloc.reasons, "posterior": alloc.posterior,
            "diagnosis": None if diagnosis is None else diagnosis.to_dict()}


def _labeled_for(ws: Workspace, ledger: Ledger, strategy: str, version: str, pool: str):
    """The labelled set LSB seeds come from, refusing one kNN search over two embedding versions."""
    from broaden.select import parse_spec
    from broaden.select.registry import get_strategy

    # auto brings LSB-LT in when there is a labelled set to seed it from (and stays Stat-AL otherwise).
    if not is_auto(strategy) and not any(get_strategy(name).needs_labeled for name, _ in parse_spec(strategy)):
        return None
    labeled = ws.labeled_table(ledger, scored=True)
    cols = ws.config.cols
    if is_auto(strategy) and labeled.num_rows == 0:
        return None
    versions = sorted(set(labeled.column("embedding_version").to_pylist()))
    mixed = [v for v in versions if v != version]
    if mixed:
        raise WorkspaceError(
            f"{pool}: embedding version {version!r}, but labelled items were embedded with "
            f"{', '.join(map(repr, mixed))}; LSB will not mix embedding versions in one kNN search — "
            "re-embed the pool (or the labelled items) with one version"
        )
    return labeled.select([cols.id, cols.label, cols.probs, cols.embedding])


def _check_class_count(pool: str, cols: io.Columns, class_names: list[str]) -> None:
    """Probabilities over another number of classes than the config names would label items wrongly.
    The first batch is enough: selection's own scan refuses a width that changes later in the pool."""
    validator = io.Validator(columns=cols, require=("probs",), num_classes=len(class_names), check_unique=False)
    try:
        next(io.iter_batches(pool, columns=[cols.probs], batch_size=1024, validator=validator), None)
    except ScoredTableError as exc:
        raise WorkspaceError(f"{exc}; the workspace has {len(class_names)} class names "
                             f"({', '.join(class_names)})") from exc


def _item_records(batch: pa.Table, excluded: set[str], cols: io.Columns, pool: str) -> list[ItemRecord]:
    keys = key_strings(batch.column(cols.id))
    if len(set(keys)) != len(keys):
        raise WorkspaceError(f"{pool}: the selection holds an id twice; pool ids must be unique")
    blocked = excluded.intersection(keys)
    if blocked:  # the selector must honour exclude; never send an item twice (or an eval item) even if it does not
        raise WorkspaceError(f"selection returned {len(blocked)} excluded item(s) (already labelled, in an open "
                             f"round, or in the labelled or evaluation table), e.g. {sorted(blocked)[0]!r}")
    probs = matrix(batch, cols.probs) if cols.probs in batch.column_names else None
    pred = probs.argmax(axis=1).tolist() if probs is not None else [None] * len(keys)

    def column(name):
        return batch.column(name).to_pylist() if name in batch.column_names else [None] * len(keys)

    seed = column("seed_id")
    if "seed_id" not in batch.column_names and "seed_ids" in batch.column_names:
        seed = [None if s is None else ",".join(map(str, s)) for s in column("seed_ids")]
    score, rank, strat = column("score"), column("rank"), column("strategy")
    sim, lal, again = column("similarity"), column("lookalike_score"), column("relabel")
    return [ItemRecord(k, strat[i], _num(score[i]), int(rank[i]), pred[i],
                       None if seed[i] is None else str(seed[i]), _num(sim[i]), _num(lal[i]), bool(again[i]))
            for i, k in enumerate(keys)]


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
