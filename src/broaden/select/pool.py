"""Streaming access to a scored pool for selection: validated record batches, id sets, join-back.

A pool is a Parquet file, a directory of Parquet files, or an in-memory ``pa.Table`` (what
:func:`broaden.inputs.as_scored` makes of any input). Nothing here holds more than one record batch of the
pool plus the id arrays it is asked to look up.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden._typing import IdsLike
from broaden.errors import BroadenError
from broaden.inputs import source_name, to_arrow
from broaden.io import (
    BATCH_SIZE, Columns, Validator, count_rows, id_keys, iter_batches, parquet_files, read_schema, read_table,
)
from broaden.progress import track


class SelectionError(BroadenError, ValueError):
    """Bad selection request: unknown strategy, bad mix, budget beyond the eligible pool, bad options."""


# ------------------------------------------------------------------------------------------ id sets
class IdSet:
    """A set of ids looked up by vectorised binary search; matches int ids given as text and vice versa.

    Ids are kept as given (int64 or str); the other form is derived only when a lookup needs it, so a
    large exclusion list of integer ids never pays for string conversion.
    """

    def __init__(self, values: Iterable | np.ndarray | None = None):
        self._ints = np.empty(0, dtype=np.int64)
        self._strs = np.empty(0, dtype=str)
        self._as_int: np.ndarray | None = None
        self._as_str: np.ndarray | None = None
        if values is not None:
            self.add(values)

    def add(self, values) -> IdSet:
        # numpy infers int64 for all-int input and str for anything mixed with text.
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
        if arr.size == 0:
            return self
        if np.issubdtype(arr.dtype, np.integer):
            self._ints = np.union1d(self._ints, arr.astype(np.int64))
        else:
            self._strs = np.union1d(self._strs, arr.astype(str))
        self._as_int = self._as_str = None
        return self

    def __len__(self) -> int:
        return len(self._ints) + len(self._strs)

    def _lookup_table(self, want_int: bool) -> np.ndarray:
        if want_int:
            if self._as_int is None:
                parsed = np.asarray([int(s) for s in self._strs.tolist() if _is_int(s)], dtype=np.int64)
                self._as_int = np.union1d(self._ints, parsed) if parsed.size else self._ints
            return self._as_int
        if self._as_str is None:
            self._as_str = np.union1d(self._strs, self._ints.astype(str)) if self._ints.size else self._strs
        return self._as_str

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask over ``keys`` (int64 or str keys from :func:`broaden.io.id_keys`)."""
        if not len(self) or keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        table = self._lookup_table(np.issubdtype(keys.dtype, np.integer))
        if table.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.searchsorted(table, keys)
        np.minimum(pos, table.size - 1, out=pos)
        return table[pos] == keys

    def union(self, values) -> IdSet:
        out = IdSet()
        out._ints, out._strs = self._ints, self._strs
        return out.add(values)


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def read_ids(path: str | os.PathLike, *, id_col: str = "id") -> np.ndarray:
    """Ids from a file: Parquet or CSV with an ``id_col`` column (or a single column), else text, one per line."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir() or suffix == ".parquet":
        schema = read_schema(p)
        col = id_col if id_col in schema.names else (schema.names[0] if len(schema.names) == 1 else None)
        if col is None:
            raise SelectionError(f"{p}: no column {id_col!r} to read excluded ids from; found {schema.names}")
        return id_keys(read_table(p, columns=[col]).column(col).drop_null())
    if not p.is_file():
        raise SelectionError(f"{p}: no such file of ids")
    if suffix == ".csv":
        from pyarrow import csv

        try:
            table = csv.read_csv(p)
        except pa.ArrowInvalid as exc:
            raise SelectionError(f"{p}: not a readable CSV file ({exc})") from exc
        col = id_col if id_col in table.schema.names else (table.schema.names[0] if table.num_columns == 1 else None)
        if col is None:
            raise SelectionError(f"{p}: no column {id_col!r} to read excluded ids from; found {table.schema.names}")
        return id_keys(table.column(col).drop_null())
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return np.asarray([s for s in lines if s and not s.startswith("#")], dtype=str)


def as_ids(values: IdsLike, *, id_col: str = "id") -> IdSet:
    """The one id-set conversion (``exclude=`` everywhere): None, an :class:`IdSet` (returned as is), a file
    of ids (:func:`read_ids`), an array or any iterable of ids, or a table-like value (a DataFrame, a
    ``pa.Table``, a Hugging Face dataset, e.g. an earlier batch) whose ``id_col`` column holds them."""
    if values is None:
        return IdSet()
    if isinstance(values, IdSet):
        return values
    if isinstance(values, (str, os.PathLike)):
        return IdSet(read_ids(values, id_col=id_col))
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return IdSet(id_keys(values.drop_null()))
    if isinstance(values, np.ndarray):
        return IdSet(values)
    kind = type(values)
    if kind.__module__.partition(".")[0] in ("pandas", "polars") and kind.__name__ == "Series":
        return IdSet(id_keys((values.to_arrow() if hasattr(values, "to_arrow") else pa.array(values)).drop_null()))
    table = to_arrow(values)
    if table is not None:
        if id_col not in table.column_names:
            raise SelectionError(f"ids: the table given has no column {id_col!r} to read ids from; "
                                 f"found {', '.join(table.column_names)}")
        return IdSet(id_keys(table.column(id_col).drop_null()))
    return IdSet(values)


# ---------------------------------------------------------------------------------------- streaming
def pool_rows(pool) -> int:
    return pool.num_rows if isinstance(pool, pa.Table) else count_rows(pool)


def pool_names(pool) -> list[str]:
    return pool.schema.names if isinstance(pool, pa.Table) else read_schema(pool).names


def _source(pool) -> str:
    return source_name(pool, "pool table")


def iter_pool(
    pool,
    columns: Columns,
    *,
    prob_cols: Sequence[str] = (),
    extra_cols: Sequence[str] = (),
    exclude: IdSet | None = None,
    batch_size: int = BATCH_SIZE,
    description: str = "scanning pool",
) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """Yield (id keys, batch) for the eligible rows of each validated batch (excluded ids removed).

    Reads only the id column, ``prob_cols`` (each validated as a probability column) and ``extra_cols``.
    Duplicate ids across the whole pool are reported after the last batch.
    """
    prob_cols = list(dict.fromkeys(prob_cols))
    validators = [
        Validator(columns=replace(columns, probs=col), require=("id", "probs"), check_unique=(i == 0))
        for i, col in enumerate(prob_cols)
    ] or [Validator(columns=columns, require=("id",))]
    read_cols = list(dict.fromkeys([columns.id, *prob_cols, *extra_cols]))
    missing = [c for c in read_cols if c not in pool_names(pool)]
    if missing:
        raise SelectionError(
            f"{_source(pool)}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(pool_names(pool))}"
        )
    raw = _sourced_batches(pool, read_cols, batch_size)
    with track(description, pool_rows(pool), transient=True) as advance:
        for batch, source, offset in raw:
            for v in validators:
                batch = v(batch, source, offset)
            keys = id_keys(batch.column(columns.id))
            if exclude is not None and len(exclude):
                keep = ~exclude.contains(keys)
                if not keep.all():
                    keys, batch = keys[keep], batch.filter(pa.array(keep))
            advance(batch.num_rows)
            yield keys, batch
    for v in validators:
        v.finish()


def _sourced_batches(pool, read_cols: Sequence[str] | None, batch_size: int
                     ) -> Iterator[tuple[pa.RecordBatch, str, int]]:
    """(batch, source, row offset in that source) of the pool's ``read_cols`` (all columns for None), so
    that error messages name the file and row."""
    if isinstance(pool, pa.Table):
        table = pool if read_cols is None else pool.select(list(read_cols))
        offset = 0
        for batch in table.to_batches(max_chunksize=batch_size):
            yield batch, "pool table", offset
            offset += batch.num_rows
        return
    for f in parquet_files(pool):
        offset = 0
        for batch in iter_batches(f, columns=read_cols, batch_size=batch_size):
            yield batch, str(f), offset
            offset += batch.num_rows


def _column_batches(pool, names: Sequence[str], batch_size: int,
                    validator: Validator | None = None) -> Iterator[pa.RecordBatch]:
    """The pool's ``names`` columns, one record batch at a time (each checked by ``validator`` if given)."""
    batches = _sourced_batches(pool, list(names), batch_size)
    return (b if validator is None else validator(b, source, off) for b, source, off in batches)


def _id_batches(pool, columns: Columns, batch_size: int) -> Iterator[np.ndarray]:
    """The pool's id keys, one record batch at a time (reads only the id column)."""
    return (id_keys(b.column(0)) for b in _column_batches(pool, [columns.id], batch_size))


def labelled_ids(pool, columns: Columns, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Ids of pool rows that already carry a label (reads only id and label; null, NaN and negative
    labels mean unlabelled): selection skips them, since asking for a known label wastes budget."""
    if columns.label not in pool_names(pool):
        return np.empty(0, dtype=np.int64)
    parts = []
    # This pass runs before the scans that validate the pool: bad ids or labels (a list id, an inf or text
    # label) must be a clear error naming the file and row here too, not a traceback or a wrong exclusion.
    check = Validator(columns=columns, require=("id",), check_unique=False)
    for batch in _column_batches(pool, [columns.id, columns.label], batch_size, check):
        label = batch.column(1)
        known = label.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(label.type) or pa.types.is_integer(label.type):
            values = label.to_numpy(zero_copy_only=False).astype(np.float64)
            known &= ~np.isnan(values) & (values >= 0)  # null reads as NaN here
        parts.append(id_keys(batch.column(0))[known])
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def count_present(pool, columns: Columns, ids: IdSet, batch_size: int = BATCH_SIZE) -> int:
    """How many pool rows have an id in ``ids`` (reads only the id column)."""
    if not len(ids):
        return 0
    return int(sum(ids.contains(keys).sum() for keys in _id_batches(pool, columns, batch_size)))


def in_pool(pool, columns: Columns, ids: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Boolean mask over ``ids``: which of them are ids of pool rows (reads only the id column)."""
    ids = np.asarray(ids)
    wanted, found = IdSet(ids), IdSet()
    if len(wanted):
        for keys in _id_batches(pool, columns, batch_size):
            found.add(keys[wanted.contains(keys)])
    return found.contains(ids)


def fetch_rows(pool, columns: Columns, ids: np.ndarray, batch_size: int = BATCH_SIZE) -> pa.Table:
    """The pool rows whose ids are in ``ids``, every column, in the order of ``ids`` (one streaming pass).

    An id that is not in the pool is an error (never a silently wrong row)."""
    wanted = IdSet(ids)
    parts, keys = [], []
    batches = (b for b, _, _ in _sourced_batches(pool, None, batch_size))
    with track("collecting selected rows", pool_rows(pool), transient=True) as advance:
        for batch in batches:
            k = id_keys(batch.column(columns.id))
            hit = wanted.contains(k)
            if hit.any():
                parts.append(pa.Table.from_batches([batch.filter(pa.array(hit))]))
                keys.append(k[hit])
            advance(batch.num_rows)
    want = np.asarray(ids)
    if not parts:
        if want.size:
            raise SelectionError(f"{_source(pool)}: none of the {want.size} requested ids is in the pool, "
                                 f"e.g. {want.tolist()[0]!r}")
        schema = pool.schema if isinstance(pool, pa.Table) else read_schema(pool)
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
    missing = (found[order][pos] != want) | ~parsed
    if missing.any():
        raise SelectionError(f"{_source(pool)}: {int(missing.sum())} requested id(s) are not in the pool, "
                             f"e.g. {np.asarray(ids)[missing].tolist()[0]!r}")
    return table.take(pa.array(order[pos], type=pa.int64()))
