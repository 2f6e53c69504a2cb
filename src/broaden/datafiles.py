"""A team's own data files (CSV / JSONL / JSON array / Parquet) read into Arrow, with the checks every
reader needs: labels by class name or index, ids present and unique, texts not empty.

Errors name the file, the column and the file's row (from 1), and the id when there is one. Used by
``broaden simulate --data`` (:mod:`broaden.simulate.data`) and by ``broaden train`` / ``broaden score`` on
text files (:mod:`broaden.models.textrun`), so both read a file the same way.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broaden.errors import DatasetError

DATA_FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def read_data_file(path: str | os.PathLike, string_cols: Sequence[str] = ()) -> pa.Table:
    """A CSV, JSONL (or JSON array) or Parquet file as an Arrow table; ``string_cols`` stay text in CSV."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DATA_FILE_SUFFIXES:
        raise DatasetError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                           f"use {', '.join(DATA_FILE_SUFFIXES)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            # Ids like "007" and numeric-looking texts stay strings; empty cells stay "" (named as empty).
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                  convert_options=pacsv.ConvertOptions(
                                      column_types={c: pa.string() for c in string_cols},
                                      strings_can_be_null=False, quoted_strings_can_be_null=False))
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"["):  # a .json holding one array of records
            return pa.Table.from_pylist(json.loads(path.read_text(encoding="utf-8")))
        return pajson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OSError) as exc:
        raise DatasetError(f"{path}: cannot read as {suffix[1:].upper()} ({exc})") from exc


def text_column(table: pa.Table, name: str) -> list[str]:
    """A column as Python strings, null → ""."""
    return [("" if v is None else str(v)) for v in table.column(name).to_pylist()]


@dataclass
class RowRef:
    """Names a place in the input for an error: the file, a column, the file's row (from 1) and its id."""

    source: str
    ids: list
    rows: np.ndarray  # the file row of each current row: a subsample keeps the file's numbering

    def __call__(self, column: str, i: int) -> str:
        at = f"{self.source}: column {column!r}, row {int(self.rows[i]) + 1}"
        return at if self.ids[i] in (None, "") else f"{at} (id {self.ids[i]!r})"

    def take(self, rows: np.ndarray) -> RowRef:
        return RowRef(self.source, [self.ids[i] for i in rows], self.rows[rows])


def require_columns(table: pa.Table, names: Sequence[str], source: str) -> None:
    """Fail naming the file and the missing column(s) (and listing the ones it has)."""
    missing = [c for c in dict.fromkeys(names) if c not in table.column_names]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {', '.join(map(repr, missing))} "
                           f"(columns: {', '.join(table.column_names)})")


def first_null(col: pa.ChunkedArray) -> int | None:
    if not col.null_count:
        return None
    return int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])


def label_indices(col: pa.ChunkedArray, class_names: Sequence[str] | None, where: RowRef,
                  column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices and names from a label column of indices or of class names."""
    if (row := first_null(col)) is not None:
        raise DatasetError(f"{where(column, row)}: missing label")
    typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = np.asarray(col.cast(pa.string()).to_pylist(), dtype=object)
        blank = [i for i, v in enumerate(values) if not v.strip()]
        if blank:  # an empty CSV cell reads as "", not null: it is a missing label, not a class ""
            raise DatasetError(f"{where(column, blank[0])}: missing label")
        names = tuple(class_names) if class_names else tuple(sorted(set(values)))
        lookup = {name: i for i, name in enumerate(names)}
        labels = np.fromiter((lookup.get(v, -1) for v in values), dtype=np.int64, count=len(values))
        if (labels < 0).any():
            row = int(np.flatnonzero(labels < 0)[0])
            raise DatasetError(f"{where(column, row)}: unknown class {values[row]!r} "
                               f"(classes: {', '.join(names)})")
        return labels, names
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
        raise DatasetError(f"{where.source}: column {column!r} holds {col.type}; give class indices or class names")
    raw = col.cast(pa.float64()).to_numpy(zero_copy_only=False) if not pa.types.is_integer(typ) else None
    if raw is not None and not np.array_equal(raw, np.round(raw)):
        row = int(np.flatnonzero(raw != np.round(raw))[0])  # NaN compares unequal too
        raise DatasetError(f"{where(column, row)}: label {raw[row]} is not a class index")
    labels = col.to_numpy().astype(np.int64) if raw is None else raw.astype(np.int64)
    names = tuple(class_names) if class_names else tuple(str(c) for c in range(int(labels.max()) + 1))
    bad = (labels < 0) | (labels >= len(names))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{where(column, row)}: class index {labels[row]} is outside "
                           f"0..{len(names) - 1} ({len(names)} classes)")
    return labels, names


def check_ids(ids: np.ndarray, where: RowRef, column: str) -> None:
    """Ids must be non-empty and unique; the first offender is named with the row of its first use."""
    if ids.dtype.kind in "US":
        empty = np.flatnonzero(ids == "")
        if len(empty):
            raise DatasetError(f"{where(column, int(empty[0]))}: empty id")
    order = np.argsort(ids, kind="stable")
    repeat = order[1:][ids[order][1:] == ids[order][:-1]]
    if len(repeat):
        row = int(repeat.min())
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise DatasetError(f"{where(column, row)}: duplicate id (first at row {int(where.rows[first]) + 1})")


def nonempty_texts(texts: list[str], where: RowRef, column: str) -> list[str]:
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise DatasetError(f"{where(column, empty[0])}: empty text")
    return texts
