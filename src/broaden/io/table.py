"""Scored-table I/O (DESIGN.md §5): read, stream, validate and atomically write Parquet.

A scored table has one row per item: ``id`` (unique str or int), ``label`` (int, null when unlabelled),
``probs`` (list of C floats), ``embedding`` (list of d float32, the [CLS] hidden state); other columns are
carried through untouched. Column names can be overridden with :class:`Columns`.

Everything here works per record batch, so a pool larger than memory can be validated and consumed in
one pass; :func:`read_table` is the in-memory convenience on top.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from broaden.errors import OutputError, ScoredTableError

PROB_SUM_TOLERANCE = 1e-3
# Rows per record batch when a pool is streamed: bounds memory, and is large enough for vectorised work.
BATCH_SIZE = 65_536
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class Columns:
    """Names of the scored table's columns (the CLI's ``--id-col`` etc. override them)."""

    id: str = "id"
    label: str = "label"
    probs: str = "probs"
    embedding: str = "embedding"

    def committee(self, n: int) -> list[str]:
        """The committee members' probability columns ``probs_m0 … probs_m{n−1}`` (what ``broaden score
        --mc-dropout N`` writes and the committee strategies find without ``committee_cols``)."""
        return [f"{self.probs}_m{i}" for i in range(n)]

    def committee_in(self, names: Iterable[str]) -> list[str]:
        """The committee columns among ``names``, in member order (``probs_m0``, ``probs_m1``, … ``probs_m10``)."""
        pattern = re.compile(re.escape(self.probs) + r"_m(0|[1-9][0-9]*)")
        found = {int(m.group(1)): n for n in names if (m := pattern.fullmatch(n))}
        return [found[i] for i in sorted(found)]


DEFAULT_COLUMNS = Columns()


# --------------------------------------------------------------------------------------------- files
def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files behind ``path``: the file itself, or a directory's ``*.parquet`` in name order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.parquet") if f.is_file() and not f.name.startswith("."))
        if not files:
            raise ScoredTableError(f"{p}: directory holds no .parquet files")
        return files
    if not p.exists():
        raise ScoredTableError(f"{p}: no such file or directory")
    return [p]


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """Schema of the first file behind ``path`` (cheap: reads only the footer)."""
    return open_parquet(parquet_files(path)[0]).schema_arrow


def count_rows(path: str | os.PathLike) -> int:
    """Row count from the Parquet footers, without reading data."""
    return sum(open_parquet(f).metadata.num_rows for f in parquet_files(path))


# What pyarrow raises for a damaged file: bad footers, thrift headers, pages that fail to decompress or decode.
READ_ERRORS = (pa.ArrowException, OSError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pyarrow's span several), for the CLI's one-line errors."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def open_parquet(f: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except READ_ERRORS as exc:
        raise ScoredTableError(f"{f}: not a readable Parquet file ({one_line(exc)})") from exc


def read_row_group(f: Path, group: int, columns: Sequence[str] | None = None) -> pa.Table:
    """One row group of one file; a damaged page is a :class:`ScoredTableError` naming the file and group."""
    pf = open_parquet(f)
    try:
        return pf.read_row_group(group, columns=columns)
    except READ_ERRORS as exc:
        raise ScoredTableError(f"{f}: row group {group} is unreadable, the file is damaged "
                               f"({one_line(exc)})") from exc


def _file_batches(pf: pq.ParquetFile, f: Path, columns, batch_size: int) -> Iterator[pa.RecordBatch]:
    """``pf.iter_batches`` with damaged data (corrupt pages, bad compression) reported as a ScoredTableError.

    Only the read is guarded: an exception raised by the consumer of a batch passes through unchanged.
    """
    it = pf.iter_batches(batch_size=batch_size, columns=columns)
    row = 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except READ_ERRORS as exc:
            raise ScoredTableError(f"{f}: data after row {row} is unreadable, the file is damaged "
                                   f"({one_line(exc)})") from exc
        row += batch.num_rows
        yield batch


# ------------------------------------------------------------------------------------- validation
@dataclass
class Validator:
    """Checks record batches of one scored table, keeping the state that spans batches and files.

    ``require`` names the logical columns that must be present (``"id"``, ``"label"``, ``"probs"``,
    ``"embedding"``). With ``logits=True`` the probability column holds raw scores and is replaced by
    their softmax instead of being checked for summing to one.
    """

    columns: Columns = DEFAULT_COLUMNS
    require: Sequence[str] = ("id", "probs")
    logits: bool = False
    num_classes: int | None = None
    dim: int | None = None
    check_unique: bool = True
    _ids: list[np.ndarray] = field(default_factory=list, repr=False)
    _id_sources: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _types: dict[str, tuple[pa.DataType, str]] = field(default_factory=dict, repr=False)

    def __call__(self, batch: pa.RecordBatch | pa.Table, source: str, row_offset: int = 0):
        names = batch.schema.names
        missing = [getattr(self.columns, r) for r in self.require if getattr(self.columns, r) not in names]
        if missing:
            raise ScoredTableError(
                f"{source}: missing column(s) {', '.join(repr(m) for m in missing)}; "
                f"found {', '.join(repr(n) for n in names)}"
            )
        self._check_types(batch.schema, source)
        c = self.columns
        if c.probs in names:
            batch = self._check_probs(batch, source, row_offset)
        if c.embedding in names:
            self._check_embedding(batch, source, row_offset)
        if c.label in names:
            self._check_labels(batch, source, row_offset)
        if c.id in names:
            self._check_ids(batch, source, row_offset)
        return batch

    # -- one type per column across the files of a folder
    def _check_types(self, schema: pa.Schema, source: str) -> None:
        """Every file of a table must give a column one type (an all-null column fits any type): Arrow
        cannot concatenate int64 ids with string or uint64 ones, and comparing them as keys would be wrong."""
        for f in schema:
            seen = self._types.get(f.name)
            if seen is None or pa.types.is_null(seen[0]):
                self._types[f.name] = (f.type, source)
            elif f.type != seen[0] and not pa.types.is_null(f.type):
                raise ScoredTableError(
                    f"{source}: column {f.name!r} has type {f.type}, but {seen[0]} in {seen[1]}; "
                    "every file of a table must use one type per column"
                )

    # -- probabilities
    def _check_probs(self, batch, source, row_offset):
        col = self.columns.probs
        arr = _combine(batch.column(batch.schema.get_field_index(col)))
        width = self._list_width(arr, col, source, row_offset, self.num_classes, "class")
        if width == 1:  # one class is no classifier: entropy, margins and discrepancy are all undefined
            raise ScoredTableError(f"{source}: column {col!r}: probability vectors have 1 class; "
                                   "a scored table needs at least 2")
        self.num_classes = width
        if len(arr) == 0:
            return batch
        values = list_matrix(arr, width, dtype=np.float64)
        _check_finite(values, col, source, row_offset)
        if self.logits:
            values = softmax(values)
            new = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), width)
            idx = batch.schema.get_field_index(col)
            batch = _replace_column(batch, idx, col, pa.list_(pa.float32()), new.cast(pa.list_(pa.float32())))
            return batch
        if (values < -PROB_SUM_TOLERANCE).any():
            bad = int(np.argwhere((values < -PROB_SUM_TOLERANCE).any(axis=1))[0, 0])
            raise ScoredTableError(
                f"{source}: column {col!r} row {row_offset + bad}: negative probability "
                f"{values[bad].min():.4g}; pass logits=True if these are raw scores"
            )
        sums = values.sum(axis=1)
        off = np.abs(sums - 1.0) > PROB_SUM_TOLERANCE
        if off.any():
            bad = int(np.argmax(off))
            raise ScoredTableError(
                f"{source}: column {col!r} row {row_offset + bad}: probabilities sum to {sums[bad]:.6g}, "
                f"expected 1 within {PROB_SUM_TOLERANCE:g}; pass logits=True if these are raw scores"
            )
        return batch

    def _check_embedding(self, batch, source, row_offset):
        col = self.columns.embedding
        arr = _combine(batch.column(batch.schema.get_field_index(col)))
        width = self._list_width(arr, col, source, row_offset, self.dim, "dimension")
        self.dim = width
        if len(arr) == 0:
            return
        _check_finite(list_matrix(arr, width, dtype=np.float32), col, source, row_offset)

    def _list_width(self, arr, col, source, row_offset, expected, what) -> int | None:
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
                or pa.types.is_fixed_size_list(arr.type)):
            raise ScoredTableError(f"{source}: column {col!r} must be a list of floats, found {arr.type}")
        value_type = arr.type.value_type
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)
                or pa.types.is_null(value_type)):
            raise ScoredTableError(f"{source}: column {col!r} must be a list of floats, found {arr.type}")
        if arr.null_count:
            bad = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise ScoredTableError(f"{source}: column {col!r} row {row_offset + bad}: value is null")
        if len(arr) == 0:
            return expected
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        ref = expected if expected is not None else int(lengths[0])
        wrong = lengths != ref
        if wrong.any():
            bad = int(np.argmax(wrong))
            raise ScoredTableError(
                f"{source}: column {col!r} row {row_offset + bad}: has {int(lengths[bad])} values, "
                f"expected {ref} (every row must have the same {what} count)"
            )
        if ref == 0:
            raise ScoredTableError(f"{source}: column {col!r}: lists are empty")
        return ref

    def _check_labels(self, batch, source, row_offset):
        col = self.columns.label
        arr = _combine(batch.column(batch.schema.get_field_index(col)))
        if not (pa.types.is_integer(arr.type) or pa.types.is_null(arr.type)):
            if pa.types.is_floating(arr.type):
                vals = arr.to_numpy(zero_copy_only=False)
                # NaN means unlabelled (pandas' nullable ints); inf equals its own rounding, so test finiteness.
                frac = ~np.isnan(vals) & (~np.isfinite(vals) | (vals != np.round(vals)))
                if frac.any():
                    bad = int(np.argmax(frac))
                    raise ScoredTableError(
                        f"{source}: column {col!r} row {row_offset + bad}: label {float(vals[bad])!r} is not an integer"
                    )
            else:
                raise ScoredTableError(f"{source}: column {col!r} must hold integers, found {arr.type}")
        if self.num_classes is None:
            return
        vals = labels_array(arr)
        bad_mask = (vals != -1) & ((vals < 0) | (vals >= self.num_classes))
        if bad_mask.any():
            bad = int(np.argmax(bad_mask))
            raise ScoredTableError(
                f"{source}: column {col!r} row {row_offset + bad}: label {int(vals[bad])} is outside "
                f"0..{self.num_classes - 1} (the probability vectors have {self.num_classes} classes)"
            )

    def _check_ids(self, batch, source, row_offset):
        col = self.columns.id
        arr = _combine(batch.column(batch.schema.get_field_index(col)))
        if not (pa.types.is_integer(arr.type) or pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
                or (pa.types.is_null(arr.type) and len(arr) == 0)):
            raise ScoredTableError(f"{source}: column {col!r} must hold integers or strings, found {arr.type}")
        if arr.null_count:
            bad = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise ScoredTableError(f"{source}: column {col!r} row {row_offset + bad}: id is null")
        if pa.types.is_uint64(arr.type) and len(arr):
            big = pc.greater(arr, pa.scalar(np.iinfo(np.int64).max, pa.uint64())).to_numpy(zero_copy_only=False)
            if big.any():  # id keys are int64; a larger uint64 would wrap onto a negative id
                bad = int(np.argmax(big))
                raise ScoredTableError(f"{source}: column {col!r} row {row_offset + bad}: id {arr[bad].as_py()} "
                                       "is larger than 2^63-1 (store such ids as strings)")
        if self.check_unique:
            self._ids.append(id_keys(arr))
            self._id_sources.append((source, row_offset))

    def finish(self) -> None:
        """Run the checks that need the whole table (duplicate ids)."""
        if not self._ids:
            return
        keys = np.concatenate(self._ids)
        order = np.argsort(keys, kind="stable")
        dup = np.flatnonzero(keys[order][1:] == keys[order][:-1])
        if dup.size:
            first, second = order[dup[0]], order[dup[0] + 1]
            raise ScoredTableError(
                f"duplicate id: rows {_locate(first, self._ids, self._id_sources)} and "
                f"{_locate(second, self._ids, self._id_sources)} share one id; ids must be unique"
            )


def _locate(pos: int, chunks: list[np.ndarray], sources: list[tuple[str, int]]) -> str:
    for chunk, (src, row_offset) in zip(chunks, sources):
        if pos < len(chunk):
            return f"{src} row {row_offset + pos}"
        pos -= len(chunk)
    return f"row {pos}"  # pragma: no cover


def id_keys(arr: pa.Array) -> np.ndarray:
    """A sortable numpy key per id: int64 for integer ids, the Python strings for string ids."""
    arr = _combine(arr)
    if pa.types.is_integer(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return np.asarray(arr.cast(pa.string()).to_pylist(), dtype=object).astype(str)


def _check_finite(values: np.ndarray, col: str, source: str, row_offset: int) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad_row, bad_col = (int(x) for x in np.argwhere(~finite)[0])
        raise ScoredTableError(
            f"{source}: column {col!r} row {row_offset + bad_row}: value {values[bad_row, bad_col]} at "
            f"position {bad_col} is not finite (NaN or inf)"
        )


# ----------------------------------------------------------------------------------- conversions
def _combine(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def list_matrix(arr: pa.Array | pa.ChunkedArray, width: int | None = None, dtype=np.float32) -> np.ndarray:
    """A list<float> column of equal-length rows as an (n, width) numpy matrix (no Python loop)."""
    arr = _combine(arr)
    n = len(arr)
    if n == 0:
        return np.zeros((0, width or 0), dtype=dtype)
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
        flat = arr.flatten()
    else:
        flat = arr.flatten()
        width = width or len(flat) // n
    values = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if values.size != n * width:
        raise ScoredTableError(f"list column has rows of unequal length (expected {width} each)")
    return values.reshape(n, width)


def matrix_to_list_array(values: np.ndarray, dtype=pa.float32()) -> pa.Array:
    """An (n, d) matrix as a list<float32> Arrow column (the scored table's on-disk form)."""
    values = np.ascontiguousarray(values)
    n, d = values.shape
    flat = pa.array(values.ravel().astype(dtype.to_pandas_dtype(), copy=False), type=dtype)
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, flat)


def labels_array(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Labels as int64 with -1 for null (unlabelled)."""
    arr = _combine(arr)
    if pa.types.is_null(arr.type):
        return np.full(len(arr), -1, dtype=np.int64)
    if pa.types.is_floating(arr.type):  # pandas stores a nullable int column as float with NaN for missing
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    filled = pc.fill_null(arr.cast(pa.int64()), -1)
    return filled.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _replace_column(batch, idx, name, typ, new):
    if isinstance(batch, pa.Table):
        return batch.set_column(idx, pa.field(name, typ), new)
    arrays = list(batch.columns)
    arrays[idx] = new
    schema = batch.schema.set(idx, pa.field(name, typ))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# ----------------------------------------------------------------------------------------- reading
def iter_batches(
    path: str | os.PathLike,
    *,
    columns: Iterable[str] | None = None,
    batch_size: int = BATCH_SIZE,
    validator: Validator | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream record batches from a Parquet file or directory, validating each when asked.

    Memory stays bounded by ``batch_size`` rows; ``validator.finish()`` runs after the last batch.
    """
    cols = list(columns) if columns is not None else None
    for f in parquet_files(path):
        pf = open_parquet(f)
        if validator is not None:
            # Checked on the footer's schema, so a file without rows cannot slip past the column checks.
            empty = pa.RecordBatch.from_pylist([], schema=pf.schema_arrow)
            validator(empty if cols is None else empty.select([c for c in cols if c in empty.schema.names]),
                      str(f))
        if cols is not None:
            missing = [c for c in cols if c not in pf.schema_arrow.names]
            if missing:
                raise ScoredTableError(
                    f"{f}: missing column(s) {', '.join(repr(m) for m in missing)}; "
                    f"found {', '.join(repr(n) for n in pf.schema_arrow.names)}"
                )
        offset = 0
        for batch in _file_batches(pf, f, cols, batch_size):
            if validator is not None:
                batch = validator(batch, str(f), offset)
            offset += batch.num_rows
            yield batch
    if validator is not None:
        validator.finish()


def read_table(
    path: str | os.PathLike,
    *,
    columns: Iterable[str] | None = None,
    validator: Validator | None = None,
) -> pa.Table:
    """Read a whole scored table (one file or a directory of files) into memory, validated if asked."""
    batches = list(iter_batches(path, columns=columns, validator=validator))
    if not batches:
        schema = read_schema(path)
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return schema.empty_table()
    if any(b.schema != batches[0].schema for b in batches[1:]):
        # Files whose column is all null in one and typed in another (the validator allows only that).
        return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="default")
    return pa.Table.from_batches(batches)


def read_scored(
    path: str | os.PathLike,
    *,
    columns: Columns = DEFAULT_COLUMNS,
    require: Sequence[str] = ("id", "probs"),
    logits: bool = False,
    read_columns: Iterable[str] | None = None,
) -> pa.Table:
    """Read and validate a scored table; the everyday entry point for commands working in memory."""
    return read_table(
        path, columns=read_columns, validator=Validator(columns=columns, require=require, logits=logits)
    )


def num_classes(data: str | os.PathLike | pa.Table, columns: Columns = DEFAULT_COLUMNS) -> int | None:
    """The class count C of a scored table, read from its first row (validated); None without probabilities."""
    names = data.schema.names if isinstance(data, pa.Table) else read_schema(data).names
    if columns.probs not in names:
        return None
    cols = [columns.probs]
    if isinstance(data, pa.Table):
        first, where = data.select(cols).slice(0, 1), "table"
    else:
        f = next((f for f in parquet_files(data) if count_rows(f)), None)
        if f is None:
            return None
        first, where = next(iter_batches(f, columns=cols, batch_size=1)), str(f)
    # logits=True: only the shape and finiteness are checked, so raw scores (--logits) are measured too.
    v = Validator(columns=columns, require=("probs",), logits=True, check_unique=False)
    v(first, where)
    return v.num_classes


def check_same_classes(labeled, pool, columns: Columns = DEFAULT_COLUMNS) -> None:
    """The labelled table and the pool must be scored over the same classes (reads one row of each).

    With C = 3 labels against C = 4 pool vectors, seeds, discrepancies and class quotas would silently mix
    two different classifiers' class indices.
    """
    c_lab, c_pool = num_classes(labeled, columns), num_classes(pool, columns)
    if c_lab is not None and c_pool is not None and c_lab != c_pool:
        name = "pool table" if isinstance(pool, pa.Table) else str(pool)
        lab = "the labelled table" + ("" if isinstance(labeled, pa.Table) else f" {labeled}")
        raise ScoredTableError(
            f"{name}: column {columns.probs!r} has {c_pool} classes, but {lab} has {c_lab}; both must be "
            "scored by the same classifier"
        )


# ----------------------------------------------------------------------------------------- writing
def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse an output path that cannot become a file, before any work is done; creates nothing.

    A command checks its outputs first so that a bad ``--out`` (a folder, a path under a file, a folder
    without write permission) fails at once with a :class:`OutputError`, not after the work, and leaves
    nothing half-written (an index saved, a first output written before the second fails).
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: the {what} path is a folder; give a file name, e.g. {p / 'out.parquet'}")
    parent = p.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{p}: cannot write the {what}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise OutputError(f"{p}: cannot write the {what}: permission denied")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or exception leaves the previous file untouched and removes the temporary one. A path that
    cannot be written (a folder, under a file, no permission) is an :class:`OutputError`.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise OutputError(f"{final}: cannot write it ({exc.strerror or one_line(exc)})") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; results should get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, final)
        except OSError as exc:  # e.g. ``final`` is a folder
            raise OutputError(f"{final}: cannot write it ({exc.strerror or one_line(exc)})") from exc
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; on success it replaces ``target`` as a whole (the old copy is
    kept as ``<target>.old`` for the instant between the two renames, then removed), so a reader never sees
    a mix of old and new files. A failure inside the block removes the new folder and keeps the old one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_table(table: pa.Table, path: str | os.PathLike, *, compression: str = "zstd") -> Path:
    """Write ``table`` to one Parquet file atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically (JSON results, configs, reports)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class ParquetStreamWriter:
    """Write record batches to one Parquet file; the file appears (atomically) only on ``close()``.

    Use as a context manager: an exception inside the block discards the partial file.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, *, compression: str = "zstd"):
        self._ctx = atomic_path(path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, schema, compression=compression)
        self.path = Path(path)
        self.rows = 0

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        self._writer.write_table(data)
        self.rows += data.num_rows

    def close(self) -> Path:
        self._writer.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, exc: BaseException) -> None:
        self._writer.close()
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> ParquetStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


# ------------------------------------------------------------------------------------ helpers
def make_scored_table(
    ids: Sequence | np.ndarray,
    probs: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
    labels: Sequence | np.ndarray | None = None,
    *,
    columns: Columns = DEFAULT_COLUMNS,
    extra: dict[str, Sequence] | None = None,
) -> pa.Table:
    """Build a scored table from numpy arrays (labels: ints, with -1 or None meaning unlabelled)."""
    data: dict[str, pa.Array] = {columns.id: pa.array(np.asarray(ids).tolist() if not isinstance(ids, pa.Array) else ids)}
    if labels is not None:
        lab = np.asarray([(-1 if v is None else v) for v in labels] if not isinstance(labels, np.ndarray) else labels)
        lab = lab.astype(np.int64)
        data[columns.label] = pa.array(lab, type=pa.int64(), mask=lab < 0)
    if probs is not None:
        data[columns.probs] = matrix_to_list_array(np.asarray(probs, dtype=np.float32))
    if embedding is not None:
        data[columns.embedding] = matrix_to_list_array(np.asarray(embedding, dtype=np.float32))
    for name, values in (extra or {}).items():
        data[name] = pa.array(values)
    return pa.table(data)
