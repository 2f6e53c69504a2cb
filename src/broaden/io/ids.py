"""The one id-set conversion (:func:`as_ids`, what every ``exclude=`` takes) and :class:`IdSet`, the set
of ids the pool scans look up, matching integer ids given as text and vice versa."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden._typing import IdsLike
from broaden.errors import SelectionError
from broaden.io.inputs import to_arrow
from broaden.io.table import id_keys, read_schema, read_table


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
        if isinstance(values, IdSet):
            self._ints = np.union1d(self._ints, values._ints)
            self._strs = np.union1d(self._strs, values._strs)
            self._as_int = self._as_str = None
            return self
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

    def difference(self, other: IdSet) -> IdSet:
        """The ids not in ``other`` (an int id and its text spelling are the same id, as in :meth:`contains`)."""
        out = IdSet()
        out._ints = self._ints[~other.contains(self._ints)]
        out._strs = self._strs[~other.contains(self._strs)]
        return out


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


__all__ = ["IdSet", "as_ids", "read_ids"]
