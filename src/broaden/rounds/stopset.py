"""The workspace's stop set (Bloodgood & Vijay-Shanker 2009): a fixed sample of unlabelled pool items that
every round's model predicts, so that consecutive models can be compared (:mod:`broaden.rounds.stopping`).

It is drawn once, at the first ``round finish`` that can, from that round's pool: the first
``STOP_SET_SIZE`` rows of a permutation seeded by the workspace's ``seed``. It is stored as
``WORKSPACE/stop_set.parquet`` (id key and embedding; the embedding version in its metadata), so later
rounds, whose pools are collected anew, predict the very same items. Labels are never needed: whether
an item of it is later labelled does not matter.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from broaden import io
from broaden.errors import BroadenError
from broaden.rounds.workspace import EMBEDDING_VERSION_KEY, Workspace, embedding_version, key_strings

STOP_SET_FILE = "stop_set.parquet"
STOP_SET_SIZE = 2000


def stop_set(ws: Workspace, pool: str, *, size: int = STOP_SET_SIZE) -> pa.Table:
    """The workspace's stop set, drawn from ``pool`` (streamed: the id column, then the drawn rows'
    embeddings) and stored the first time; read back every later time."""
    path = ws.path / STOP_SET_FILE
    if path.exists():
        return io.read_table(path)
    cols = ws.config.cols
    n = io.count_rows(pool)
    chosen = np.sort(np.random.default_rng(ws.config.seed).permutation(n)[:size])
    keys, vectors, offset = [], [], 0
    for batch in io.iter_batches(pool, columns=[cols.id, cols.embedding]):
        lo, hi = np.searchsorted(chosen, [offset, offset + batch.num_rows])
        if hi > lo:
            take = pa.array(chosen[lo:hi] - offset)
            keys += key_strings(batch.column(0).take(take))
            vectors.append(io.list_matrix(batch.column(1).take(take)))
        offset += batch.num_rows
    version = embedding_version(pool, None, ws.config)
    table = pa.table({"id": pa.array(keys, pa.string()),
                      "embedding": io.matrix_to_list_array(np.concatenate(vectors) if vectors
                                                           else np.zeros((0, 0), np.float32))})
    table = table.replace_schema_metadata({EMBEDDING_VERSION_KEY: version.encode()})
    io.write_table(table, path)
    return table


def stop_set_predictions(ws: Workspace, pool: str, classifier, trained_version: str) -> dict:
    """What ``round finish`` records: the classifier's argmax on the stop set (``predictions``, in its row
    order), its ``size`` and a ``digest`` of its ids; or ``skipped`` with the reason it could not (the pool
    gone, another embedding version) — finishing a round never fails for want of a stopping signal."""
    try:
        table = stop_set(ws, pool)
    except (BroadenError, pa.ArrowException, OSError) as exc:
        return {"skipped": f"no stop set: {io.one_line(exc)}"}
    version = (table.schema.metadata or {}).get(EMBEDDING_VERSION_KEY, b"").decode()
    if version != trained_version:
        return {"skipped": f"the stop set ({STOP_SET_FILE}) is embedded with version {version!r}, the classifier "
                           f"was trained on {trained_version!r}"}
    if table.num_rows == 0:
        return {"skipped": f"the stop set ({STOP_SET_FILE}) is empty"}
    ids = table.column("id").to_pylist()
    probs = np.asarray(classifier.predict_proba(io.list_matrix(table.column("embedding"))))
    return {"size": len(ids), "digest": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
            "predictions": probs.argmax(axis=1).tolist()}
