"""The pool as LSB reads it: embedding blocks in row order, a training sample, a fingerprint.

A pool is a Parquet file, a directory of Parquet files, or an in-memory ``pa.Table``. Rows are numbered
in file-name then row order; kNN structures store these positions internally and translate them to the
pool's external ids before anything leaves this package. Nothing here holds more than one record batch
of embeddings, except the training sample it is asked for.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from broaden._typing import PoolLike
from broaden.errors import BroadenError, ScoredTableError
from broaden.inputs import as_scored, source_name
from broaden.io import (
    BATCH_SIZE, Columns, Validator, count_rows, iter_batches, list_matrix, open_parquet, parquet_files,
    read_row_group, read_schema,
)
METRICS = ("cosine", "l2")


class KNNError(BroadenError, ValueError):
    """Bad kNN request: unknown index kind, unsupported metric, mismatched dimensions."""


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, and unit-normalised for cosine (cosine = inner product of unit vectors)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(x)  # zero vectors stay zero
    return x


def faiss_metric(metric: str) -> int:
    if metric not in METRICS:
        raise KNNError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


@dataclass
class PoolSource:
    """One pool with its id and embedding columns; see the module docstring."""

    data: pa.Table | Path
    columns: Columns

    @classmethod
    def of(cls, pool: PoolLike | PoolSource, columns: Columns) -> PoolSource:
        """Any input :func:`broaden.inputs.as_scored` takes (a path stays a path, streamed)."""
        if isinstance(pool, PoolSource):
            return pool
        data = as_scored(pool, columns=columns, what="pool")
        return cls(data if isinstance(data, pa.Table) else Path(data), columns)

    @property
    def name(self) -> str:
        return source_name(self.data, "pool table")

    @property
    def is_table(self) -> bool:
        return isinstance(self.data, pa.Table)

    @property
    def num_rows(self) -> int:
        return self.data.num_rows if self.is_table else count_rows(self.data)

    @property
    def schema(self) -> pa.Schema:
        return self.data.schema if self.is_table else read_schema(self.data)

    def _require(self) -> None:
        names = self.schema.names
        missing = [c for c in (self.columns.id, self.columns.embedding) if c not in names]
        if missing:
            raise ScoredTableError(
                f"{self.name}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(names)}"
            )

    @property
    def dim(self) -> int:
        """Embedding dimension, from the first row (validated: the index is sized by it before any scan)."""
        self._require()
        cols = [self.columns.embedding]
        if self.is_table:
            first, where = self.data.select(cols).slice(0, 1), self.name
        else:
            nonempty = next((f for f in parquet_files(self.data) if count_rows(f)), None)
            if nonempty is None:
                raise ScoredTableError(f"{self.name}: the pool is empty")
            first, where = next(iter_batches(nonempty, columns=cols, batch_size=1)), str(nonempty)
        if first.num_rows == 0:
            raise ScoredTableError(f"{self.name}: the pool is empty")
        first = Validator(columns=self.columns, require=("embedding",), check_unique=False)(first, where)
        return list_matrix(first.column(0)).shape[1]

    def blocks(self, *, batch_size: int = BATCH_SIZE, validate: bool = True
               ) -> Iterator[tuple[int, pa.Array, np.ndarray]]:
        """(first row position, id array, raw float32 embedding matrix) per record batch, in row order.

        With ``validate`` each batch is checked (list widths, NaN/inf, null or duplicate ids).
        """
        self._require()
        cols = [self.columns.id, self.columns.embedding]
        validator = Validator(columns=self.columns, require=("id", "embedding")) if validate else None
        if self.is_table:
            batches = self._table_batches(cols, batch_size, validator)
        else:
            batches = iter_batches(self.data, columns=cols, batch_size=batch_size, validator=validator)
        offset = 0
        for batch in batches:
            if batch.num_rows:
                yield offset, batch.column(0), list_matrix(batch.column(1))
            offset += batch.num_rows

    def _table_batches(self, cols, batch_size, validator):
        offset = 0
        for batch in self.data.select(cols).to_batches(max_chunksize=batch_size):
            yield validator(batch, self.name, offset) if validator is not None else batch
            offset += batch.num_rows
        if validator is not None:
            validator.finish()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """About ``n`` raw embeddings drawn uniformly, reading only the row groups they fall in."""
        total = self.num_rows
        n = min(n, total)
        if self.is_table:
            rows = np.sort(rng.choice(total, size=n, replace=False))
            return list_matrix(self.data.column(self.columns.embedding).take(pa.array(rows)))
        # Row groups chosen at random until they hold 2n rows, then rows within them: uniform enough for
        # k-means training without a full pass over a pool larger than memory.
        meta = {f: open_parquet(f).metadata for f in parquet_files(self.data)}
        groups = [(f, g, m.row_group(g).num_rows) for f, m in meta.items() for g in range(m.num_row_groups)]
        order = rng.permutation(len(groups))
        parts, have = [], 0
        for i in order:
            f, g, rows = groups[i]
            if not rows:
                continue
            col = read_row_group(f, g, [self.columns.embedding]).column(0)
            parts.append(list_matrix(col))
            have += rows
            if have >= 2 * n:
                break
        x = np.concatenate(parts)
        return x[np.sort(rng.choice(len(x), size=min(n, len(x)), replace=False))]

    def fingerprint(self) -> dict | None:
        """What identifies this pool's content on disk (None for an in-memory table: never cached)."""
        if self.is_table:
            return None
        root = self.data.resolve()
        files = []
        for f in parquet_files(self.data):
            st = f.stat()
            rel = f.resolve().relative_to(root).as_posix() if root.is_dir() else f.name
            files.append([rel, st.st_size, st.st_mtime_ns, count_rows(f)])
        return {"pool": str(root), "files": files, "id_col": self.columns.id,
                "embedding_col": self.columns.embedding}
