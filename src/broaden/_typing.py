"""Names for what the public functions accept (like cleanlab's ``typing.py``); used in signatures only.

pandas, polars and Hugging Face ``datasets`` appear as forward references: none of them is a dependency,
and nothing here imports them.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, Union

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    import datasets
    import pandas
    import polars

    from broaden.io.ids import IdSet

PathLike: TypeAlias = Union[str, os.PathLike]

#: One column's values: a numpy array (2-D for ``probs``/``embedding``), a list, a pandas or polars
#: Series, a pyarrow Array, or anything ``numpy.asarray`` takes (a CPU torch tensor).
ArrayLike: TypeAlias = Union[np.ndarray, pa.Array, pa.ChunkedArray, "pandas.Series", "polars.Series", Iterable]

#: A scored table as users hold it: a path (Parquet file or folder, streamed), an Arrow table, batch or
#: stream, a pandas or polars DataFrame, a Hugging Face ``datasets.Dataset``, or a mapping of column names
#: to arrays. :func:`broaden.io.inputs.as_scored` turns every one into a :data:`Scored`.
TableLike: TypeAlias = Union[
    PathLike, pa.Table, pa.RecordBatch, pa.RecordBatchReader,
    "pandas.DataFrame", "polars.DataFrame", "polars.LazyFrame", "datasets.Dataset", Mapping[str, ArrayLike],
]
PoolLike: TypeAlias = TableLike
LabeledLike: TypeAlias = TableLike

#: What every function reads after conversion: a path (streamed in record batches) or an in-memory table.
Scored: TypeAlias = Union[PathLike, pa.Table]

#: Ids to skip or look up: a file of ids (text, CSV or Parquet), an :class:`~broaden.io.ids.IdSet`,
#: an array or any iterable of ids, or a table-like value whose id column is used.
IdsLike: TypeAlias = Union[PathLike, "IdSet", ArrayLike, TableLike, Any]
