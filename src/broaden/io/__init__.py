"""Scored tables and pools (DESIGN.md §5, §8): the bottom layer every other part of broaden stands on.

- :mod:`broaden.io.table` — :class:`Columns`, validation, Parquet reading and streaming, atomic writes.
- :mod:`broaden.io.inputs` — the one conversion of what users hold (paths, Arrow, pandas, polars, HF
  datasets, dicts of arrays) to a scored table (:func:`as_scored`) and the one loader (:func:`load_scored`).
- :mod:`broaden.io.ids` — the one id-set conversion (:func:`as_ids`) and :class:`IdSet`.
- :mod:`broaden.io.pool` — the one :class:`Pool`: rows, schema, batches, stream, blocks, sample, fingerprint,
  fetch_rows.

Imports nothing of ours but :mod:`broaden.errors`, :mod:`broaden._typing` and :mod:`broaden.progress`.
"""
from __future__ import annotations

from broaden.io.ids import IdSet, as_ids, read_ids
from broaden.io.inputs import as_scored, load_scored, source_name, to_arrow
from broaden.io.pool import Pool
from broaden.io.table import (
    BATCH_SIZE, DEFAULT_COLUMNS, PROB_SUM_TOLERANCE, READ_ERRORS, Columns, ParquetStreamWriter, Validator,
    _combine, _fsync_dir, atomic_dir, atomic_path, check_same_classes, check_writable, count_rows, id_keys,
    iter_batches, labels_array, list_matrix, make_scored_table, matrix_to_list_array, num_classes, one_line,
    open_parquet, parquet_files, read_row_group, read_schema, read_scored, read_table, softmax, write_table,
    write_text,
)

__all__ = [
    "BATCH_SIZE", "DEFAULT_COLUMNS", "PROB_SUM_TOLERANCE", "READ_ERRORS", "Columns", "IdSet", "ParquetStreamWriter",
    "Pool", "Validator", "as_ids", "as_scored", "atomic_dir", "atomic_path", "check_same_classes",
    "check_writable", "count_rows", "id_keys", "iter_batches", "labels_array", "list_matrix", "load_scored",
    "make_scored_table", "matrix_to_list_array", "num_classes", "one_line", "open_parquet", "parquet_files",
    "read_ids", "read_row_group", "read_schema", "read_scored", "read_table", "softmax", "source_name",
    "to_arrow", "write_table", "write_text",
]
