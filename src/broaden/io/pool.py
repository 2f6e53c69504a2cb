"""The one pool: a scored table streamed in record batches for selection, LSB and the engines.

A pool is a Parquet file, a directory of Parquet files, or an in-memory ``pa.Table`` (what
:func:`broaden.io.inputs.as_scored` makes of any input). Rows are numbered in file-name then row order;
kNN structures store these positions and translate them to the pool's ids before anything leaves LSB.
Nothing here holds more than one record batch of the pool, plus the ids it is asked to look up or the
training sample it is asked for.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden._typing import PoolLike
from broaden.errors import ScoredTableError, SelectionError
from broaden.io.ids import IdSet, _is_int
from broaden.io.inputs import as_scored, source_name
from broaden.io.table import (
    BATCH_SIZE, DEFAULT_COLUMNS, Columns, Validator, count_rows, id_keys, iter_batches, list_matrix,
    open_parquet, parquet_files, read_row_group, read_schema,
)
from broaden.progress import track


@dataclass
class Pool:
    """One pool with its column names: rows, schema, batches, stream, blocks, sample,
    fingerprint, fetch_rows."""

    data: pa.Table | Path
    columns: Columns = DEFAULT_COLUMNS

    @classmethod
    def of(cls, pool: PoolLike | Pool, columns: Columns = DEFAULT_COLUMNS) -> Pool:
        """Any input :func:`broaden.io.inputs.as_scored` takes (a path stays a path, streamed)."""
        if isinstance(pool, Pool):
            return pool if pool.columns == columns else cls(pool.data, columns)
        data = as_scored(pool, columns=columns, what="pool")
        return cls(data if isinstance(data, pa.Table) else Path(data), columns)

    # ------------------------------------------------------------------------------------- shape
    @property
    def name(self) -> str:
        """How error messages name the pool: its path, or "pool table"."""
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

    @property
    def names(self) -> list[str]:
        return self.schema.names

    def ids(self, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Every id key of the pool in row order (reads only the id column)."""
        parts = list(self._id_batches(batch_size))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------------- selection's scans
    def batches(self, *, prob_cols: Sequence[str] = (), extra_cols: Sequence[str] = (),
                exclude: IdSet | None = None, batch_size: int = BATCH_SIZE,
                description: str = "scanning pool") -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """(id keys, batch) for the eligible rows of each validated batch (excluded ids removed).

        Reads only the id column, ``prob_cols`` (each validated as a probability column) and ``extra_cols``.
        Duplicate ids across the whole pool are reported after the last batch.
        """
        columns = self.columns
        prob_cols = list(dict.fromkeys(prob_cols))
        validators = [
            Validator(columns=replace(columns, probs=col), require=("id", "probs"), check_unique=(i == 0))
            for i, col in enumerate(prob_cols)
        ] or [Validator(columns=columns, require=("id",))]
        read_cols = list(dict.fromkeys([columns.id, *prob_cols, *extra_cols]))
        self.require(read_cols, SelectionError)
        with track(description, self.num_rows, transient=True) as advance:
            for batch, source, offset in self._sourced(read_cols, batch_size):
                for v in validators:
                    batch = v(batch, source, offset)
                keys = id_keys(batch.column(columns.id))
                if exclude is not None and len(exclude):
                    keep = ~exclude.contains(keys)
                    if not keep.all():
                        keys, batch = keys[keep], batch.filter(pa.array(keep))
                advance(batch.num_rows)
                if batch.num_rows:  # every row excluded: nothing to score (and an empty list column has no width)
                    yield keys, batch
        for v in validators:
            v.finish()

    def require(self, names: Sequence[str], error: type[Exception] = ScoredTableError, *,
                needed_by: str | None = None) -> None:
        """``error`` naming the pool, the columns among ``names`` that it lacks and who ``needed_by`` them."""
        have = self.names
        missing = [c for c in names if c not in have]
        if missing:
            who = f", which {needed_by} needs" if needed_by else ""
            raise error(f"{self.name}: missing column(s) {', '.join(map(repr, missing))}{who}; found {', '.join(have)}")

    def stream(self, columns: Sequence[str] | None = None, batch_size: int = BATCH_SIZE) -> Iterator[pa.RecordBatch]:
        """The pool's ``columns`` (every column for None) one record batch at a time, in row order, as read
        (not validated): what :meth:`broaden.engines.Engine.map_batches` feeds its function."""
        return (batch for batch, _, _ in self._sourced(columns, batch_size))

    def _sourced(self, read_cols: Sequence[str] | None, batch_size: int
                 ) -> Iterator[tuple[pa.RecordBatch, str, int]]:
        """(batch, source, row offset in that source) of ``read_cols`` (all columns for None), so that
        error messages name the file and row."""
        if self.is_table:
            table = self.data if read_cols is None else self.data.select(list(read_cols))
            offset = 0
            for batch in table.to_batches(max_chunksize=batch_size):
                yield batch, "pool table", offset
                offset += batch.num_rows
            return
        for f in parquet_files(self.data):
            offset = 0
            for batch in iter_batches(f, columns=read_cols, batch_size=batch_size):
                yield batch, str(f), offset
                offset += batch.num_rows

    def _column_batches(self, names: Sequence[str], batch_size: int,
                        validator: Validator | None = None) -> Iterator[pa.RecordBatch]:
        """The pool's ``names`` columns, one record batch at a time (each checked by ``validator`` if given)."""
        batches = self._sourced(list(names), batch_size)
        return (b if validator is None else validator(b, source, off) for b, source, off in batches)

    def _id_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The pool's id keys, one record batch at a time (reads only the id column)."""
        return (id_keys(b.column(0)) for b in self._column_batches([self.columns.id], batch_size))

    def labelled_ids(self, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Ids of pool rows that already carry a label (reads only id and label; null, NaN and negative
        labels mean unlabelled): selection skips them, since asking for a known label wastes budget."""
        columns = self.columns
        if columns.label not in self.names:
            return np.empty(0, dtype=np.int64)
        parts = []
        # This pass runs before the scans that validate the pool: bad ids or labels (a list id, an inf or
        # text label) must be a clear error naming the file and row here too, not a traceback or a wrong
        # exclusion.
        check = Validator(columns=columns, require=("id",), check_unique=False)
        for batch in self._column_batches([columns.id, columns.label], batch_size, check):
            label = batch.column(1)
            known = label.is_valid().to_numpy(zero_copy_only=False)
            if pa.types.is_floating(label.type) or pa.types.is_integer(label.type):
                values = label.to_numpy(zero_copy_only=False).astype(np.float64)
                known &= ~np.isnan(values) & (values >= 0)  # null reads as NaN here
            parts.append(id_keys(batch.column(0))[known])
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def count_present(self, ids: IdSet, batch_size: int = BATCH_SIZE) -> int:
        """How many pool rows have an id in ``ids`` (reads only the id column)."""
        if not len(ids):
            return 0
        return int(sum(ids.contains(keys).sum() for keys in self._id_batches(batch_size)))

    def contains(self, ids: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Boolean mask over ``ids``: which of them are ids of pool rows (reads only the id column)."""
        ids = np.asarray(ids)
        wanted, found = IdSet(ids), IdSet()
        if len(wanted):
            for keys in self._id_batches(batch_size):
                found.add(keys[wanted.contains(keys)])
        return found.contains(ids)

    def fetch_rows(self, ids: np.ndarray, batch_size: int = BATCH_SIZE, *, columns: Sequence[str] | None = None,
                   missing: str = "raise") -> pa.Table:
        """The pool rows whose ids are in ``ids``, in the order of ``ids`` (one streaming pass), with every
        column or only ``columns`` (the id column always comes first).

        An id that is not in the pool is an error (never a silently wrong row); with ``missing="skip"`` its
        row is left out instead, for a caller that names the missing ids in its own words."""
        if missing not in ("raise", "skip"):
            raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
        id_col = self.columns.id
        read = None if columns is None else [id_col, *(c for c in dict.fromkeys(columns) if c != id_col)]
        if read is not None:
            self.require(read)
        wanted = IdSet(ids)
        parts, keys = [], []
        with track("collecting selected rows", self.num_rows, transient=True) as advance:
            for batch, _, _ in self._sourced(read, batch_size):
                k = id_keys(batch.column(id_col))
                hit = wanted.contains(k)
                if hit.any():
                    parts.append(pa.Table.from_batches([batch.filter(pa.array(hit))]))
                    keys.append(k[hit])
                advance(batch.num_rows)
        want = np.asarray(ids)
        if not parts:
            if want.size and missing == "raise":
                raise SelectionError(f"{self.name}: none of the {want.size} requested ids is in the pool, "
                                     f"e.g. {want.tolist()[0]!r}")
            schema = self.schema if read is None else pa.schema([self.schema.field(c) for c in read])
            return schema.empty_table()
        table = pa.concat_tables(parts, promote_options="default")
        found = np.concatenate(keys)
        order = np.argsort(found, kind="stable")
        # IdSet matched across int/str spellings; compare in the pool's own id type.
        parsed = np.ones(want.shape, dtype=bool)
        if np.issubdtype(found.dtype, np.integer) and not np.issubdtype(want.dtype, np.integer):
            parsed = np.asarray([_is_int(s) for s in want.tolist()], dtype=bool)
            want = np.asarray([int(s) if ok else 0 for s, ok in zip(want.tolist(), parsed)], dtype=np.int64)
        elif not np.issubdtype(found.dtype, np.integer):
            want = want.astype(str)
        pos = np.minimum(np.searchsorted(found[order], want), len(order) - 1)
        absent = (found[order][pos] != want) | ~parsed
        if absent.any():
            if missing == "raise":
                raise SelectionError(f"{self.name}: {int(absent.sum())} requested id(s) are not in the pool, "
                                     f"e.g. {np.asarray(ids)[absent].tolist()[0]!r}")
            pos = pos[~absent]
        return table.take(pa.array(order[pos], type=pa.int64()))

    # ------------------------------------------------------------------------- LSB's embeddings
    @property
    def dim(self) -> int:
        """Embedding dimension, from the first row (validated: the index is sized by it before any scan)."""
        self.require([self.columns.id, self.columns.embedding])
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
        self.require([self.columns.id, self.columns.embedding])
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


__all__ = ["Pool"]
