"""The one conversion from the data users hold to a scored table (DESIGN.md §5), and the one loader.

Every public function that takes a scored table passes it through :func:`as_scored`: a path stays a path
(a pool of 10M rows is streamed in record batches, never read whole), every in-memory kind becomes a
``pyarrow.Table`` through Arrow — zero-copy where the library allows. pandas, polars and Hugging Face
``datasets`` are recognised by their module name, so none of them is imported, or needed, by broaden.
:func:`load_scored` is the in-memory loader on top: converted, then validated by :class:`broaden.io.Validator`
the same way for a path and for a table.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from broaden._typing import ArrayLike, Scored, TableLike
from broaden.errors import ScoredTableError
from broaden.io.table import DEFAULT_COLUMNS, Columns, Validator, matrix_to_list_array, one_line, read_table

ACCEPTED = ("a path to a Parquet file or folder, a pyarrow Table, RecordBatch or RecordBatchReader, a pandas "
            "or polars DataFrame, a Hugging Face datasets.Dataset, a dict of column arrays, or arrays by "
            "keyword (probs=, embedding=, labels=, ids=)")
# Schema metadata that describes the source library's view of exactly that table (pandas' index, HF's
# features); it turns stale as soon as a selection adds or drops columns, so it is not carried along.
LIBRARY_METADATA = (b"pandas", b"huggingface")
# Keyword names accepted as keys of a dict of arrays, for the columns they stand for.
ALIASES = {"ids": "id", "labels": "label"}


def as_scored(
    data: TableLike | None = None,
    *,
    probs: ArrayLike | None = None,
    embedding: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    ids: ArrayLike | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    what: str = "table",
) -> Scored:
    """``data`` (or the keyword arrays) as a path, returned unchanged, or a ``pyarrow.Table``.

    Arrays follow cleanlab's conventions: ``probs`` and ``embedding`` are (n, C) and (n, d) matrices,
    ``labels`` integers with -1 (or NaN) for unlabelled rows, ``ids`` default to the row numbers 0..n-1.
    Anything else is a ``TypeError`` naming the accepted kinds; ``what`` names the argument in it.
    """
    given = {name: v for name, v in ((columns.id, ids), (columns.label, labels), (columns.probs, probs),
                                     (columns.embedding, embedding)) if v is not None}
    if given:
        if data is not None:
            raise TypeError(f"{what}: give a table or arrays (probs=, embedding=, labels=, ids=), not both")
        return from_arrays(given, columns)
    if data is None:
        raise TypeError(f"{what}: no data given; expected {ACCEPTED}")
    if isinstance(data, (str, os.PathLike)):
        return data
    table = to_arrow(data, columns, what)
    if table is None:
        raise TypeError(f"{what}: cannot read a {_kind(data)} as a scored table; expected {ACCEPTED}{_hint(data)}")
    return table


def load_scored(
    data: TableLike,
    *,
    columns: Columns = DEFAULT_COLUMNS,
    require: Sequence[str] = ("id", "probs"),
    logits: bool = False,
    read_columns: Iterable[str] | None = None,
    what: str = "table",
) -> pa.Table:
    """The scored table in memory, validated (``require``, ``logits`` as :class:`broaden.io.Validator`).

    ``read_columns`` reads (and checks) only those columns, from a path or a table alike. Arrays come as a
    dict (``{"probs": P, "labels": y}``) or through :func:`as_scored`.
    """
    data = as_scored(data, columns=columns, what=what)
    validator = Validator(columns=columns, require=require, logits=logits)
    if not isinstance(data, pa.Table):
        return read_table(data, columns=read_columns, validator=validator)
    if read_columns is not None:
        # As for a path (broaden.io.iter_batches): the columns present are checked first, so a missing one
        # is the validator's error naming it, then only those columns are read.
        read_columns = [c for c in read_columns if c in data.column_names]
        validator(data.schema.empty_table().select(read_columns), what)
        data = data.select(read_columns)
    table = validator(data, what)
    validator.finish()
    return table


def source_name(data: Scored, default: str = "table") -> str:
    """How error messages name a converted table: its path, or ``default`` for one in memory."""
    return default if isinstance(data, pa.Table) else str(data)


# ------------------------------------------------------------------------------------- conversions
def to_arrow(data, columns: Columns = DEFAULT_COLUMNS, what: str = "table") -> pa.Table | None:
    """An in-memory table-like value as a ``pyarrow.Table``; None when ``data`` is no kind we know."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()  # a stream can be read once; selection makes several passes
    lib, name = _kind(data).partition(".")[0], type(data).__name__
    if isinstance(data, Mapping) and lib != "datasets":  # a DatasetDict is a dict of splits, not of columns
        return from_arrays(data, columns)
    if lib == "pandas" and name == "DataFrame":
        return _normalise(_from_pandas(data, columns, what))
    if lib == "polars" and name in ("DataFrame", "LazyFrame"):
        return _normalise((data.collect() if name == "LazyFrame" else data).to_arrow())
    if lib == "datasets" and name == "Dataset":
        # The arrow format respects a selection or shuffle's index mapping; without one it is a zero-copy slice.
        return _normalise(data.with_format("arrow")[:])
    if hasattr(data, "__arrow_c_stream__"):  # any other Arrow producer (DuckDB, …) via the PyCapsule interface
        try:
            return _normalise(pa.table(data))
        except (TypeError, pa.ArrowException):
            return None
    return None


def from_arrays(arrays: Mapping[str, ArrayLike], columns: Columns = DEFAULT_COLUMNS) -> pa.Table:
    """Columns from arrays (2-D ones become list columns); ids 0..n-1 when no id column is given."""
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    for key, values in arrays.items():
        name = str(key)
        if key in ALIASES and getattr(columns, ALIASES[key]) not in arrays:
            name = getattr(columns, ALIASES[key])
        out[name] = _column(values, label=name == columns.label, name=name)
    lengths = {name: len(arr) for name, arr in out.items()}
    if len(set(lengths.values())) > 1:
        raise ScoredTableError("arrays of different lengths: "
                               + ", ".join(f"{name!r} has {n} rows" for name, n in lengths.items()))
    if columns.id not in out:
        n = next(iter(lengths.values()), 0)
        out = {columns.id: pa.array(np.arange(n, dtype=np.int64)), **out}
    return pa.table(out)


def _column(values, *, label: bool, name: str) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    lib = _kind(values).partition(".")[0]
    if lib == "polars" and hasattr(values, "to_arrow"):
        return _normalise(pa.table({name: values.to_arrow()})).column(0)
    if lib == "pandas" and type(values).__name__ == "Series" and values.dtype != object:
        return pa.Array.from_pandas(values)  # nullable dtypes keep their nulls
    arr = np.asarray(values)
    if arr.ndim == 2:
        dtype = arr.dtype if arr.dtype.kind in "fiu" else np.dtype(np.float64)
        return matrix_to_list_array(arr.astype(dtype, copy=False), pa.from_numpy_dtype(dtype))
    if arr.ndim != 1:
        raise ScoredTableError(f"column {name!r}: expected a 1-D array or an (n, k) matrix, got shape {arr.shape}")
    if label and arr.dtype.kind in "iu":
        return pa.array(arr.astype(np.int64), type=pa.int64(), mask=arr < 0)  # -1 = unlabelled, as in cleanlab
    try:
        return pa.array(arr if arr.dtype != object else arr.tolist())
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ScoredTableError(f"column {name!r}: cannot convert to Arrow ({one_line(exc)})") from exc


def _from_pandas(df, columns: Columns, what: str) -> pa.Table:
    if columns.id not in df.columns and df.index.name == columns.id:
        df = df.reset_index()  # ids kept as the index, as pandas users often do
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ScoredTableError(f"{what}: cannot convert the pandas DataFrame to Arrow ({one_line(exc)})") from exc


def _normalise(table: pa.Table) -> pa.Table:
    """Drop library metadata; read string views (polars' Arrow export) as strings the validator knows."""
    meta = table.schema.metadata
    if meta and any(k in meta for k in LIBRARY_METADATA):
        table = table.replace_schema_metadata({k: v for k, v in meta.items() if k not in LIBRARY_METADATA} or None)
    is_view = getattr(pa.types, "is_string_view", None)
    if is_view is not None and any(is_view(f.type) for f in table.schema):
        table = table.cast(pa.schema([f.with_type(pa.large_string()) if is_view(f.type) else f for f in table.schema],
                                     metadata=table.schema.metadata))
    return table


def _kind(data) -> str:
    cls = type(data)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _hint(data) -> str:
    name = type(data).__name__
    if isinstance(data, np.ndarray) or name in ("Series", "Tensor"):
        return "; pass arrays by name, e.g. as_scored(probs=P) or {'probs': P}"
    if name in ("DatasetDict", "IterableDatasetDict"):
        return "; pick one split, e.g. ds['train']"
    return ""
