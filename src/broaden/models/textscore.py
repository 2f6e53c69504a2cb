"""``broaden score`` for a text run (``broaden train --data``): a CSV / JSONL / Parquet file in, the scored
table out (DESIGN §5: ``id``, ``label`` as class index or null, ``probs``, ``embedding`` = the run's latent,
the file's other columns carried through).

Rows with nothing to read (empty text) are not scored; they go to the errors file (``id``, ``row`` from 0,
``error``), never dropped silently. Inference is length-bucketed, in ``torch.inference_mode``, with bf16
only where :func:`broaden.models.fastinfer.choose_precision` finds it safe and faster on this machine.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden.datafiles import RowRef, check_ids, first_null, read_data_file, require_columns
from broaden._lazy import renamed
from broaden.errors import ConfigError, DatasetError
from broaden.io import Columns, ParquetStreamWriter, check_writable, matrix_to_list_array, write_table
from broaden.models.score import ScoreResult, errors_path_for

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class TextScoreResult(ScoreResult):
    precision: dict = field(default_factory=dict)  # the dtype used and why (calibration figures when run)


def _pool_labels(col: pa.ChunkedArray, class_names: list[str], where: RowRef, column: str) -> pa.Array:
    """A pool's label column as class indices, null (or an empty cell) = unlabelled."""
    typ = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    values = col.to_pylist()
    lookup = {name: i for i, name in enumerate(class_names)}
    out: list[int | None] = []
    for i, v in enumerate(values):
        if v is None or v == "":
            out.append(None)
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
            if v not in lookup:
                raise DatasetError(f"{where(column, i)}: unknown class {v!r} (classes: {', '.join(class_names)})")
            out.append(lookup[v])
        elif isinstance(v, (int, float)) and float(v).is_integer() and 0 <= v < len(class_names):
            out.append(int(v))
        else:
            raise DatasetError(f"{where(column, i)}: label {v!r} is not a class index in "
                               f"0..{len(class_names) - 1}")
    return pa.array(out, pa.int64())


@renamed(progress="show_progress")
def score_text(model, data: str | os.PathLike, out: str | os.PathLike, *, columns: Columns | None = None,
               errors_out: str | os.PathLike | None = None, batch_size: int = 64, window: int = 4096,
               precision: str = "auto", device: str = "cpu", num_threads: int | None = None,
               show_progress: bool = True, mc_dropout: int = 0, seed: int = 0,
               calibrate: bool = True) -> TextScoreResult:
    """Score every row of ``data`` with a text run (a path, or a loaded
    :class:`~broaden.models.textrun.TextModel`).

    ``columns`` names the output id / label / probs / embedding columns (and the pool's id column; without
    one in the file the row number from 0 is the id). ``precision`` is ``auto`` (bf16 when safe and
    faster), ``fp32`` or ``bf16`` (forced; still refused without native bf16). ``num_threads`` defaults to
    one per core this process may use. ``mc_dropout`` = N ≥ 2 writes N Monte Carlo dropout passes (seeded by
    ``seed``) as ``probs_m0 …`` and their mean as ``probs`` (:meth:`TextModel.predict_passes`).
    ``calibrate`` applies the run's temperature (:mod:`broaden.calibration`; a loaded ``TextModel`` keeps its
    own choice); T is recorded in the output's metadata (``broaden.temperature``) and the result.
    """
    from broaden.calibration import temperature_metadata
    from broaden.models.fastinfer import CALIBRATION_ITEMS, bf16_hardware, choose_precision, default_threads
    from broaden.models.mcdropout import check_passes
    from broaden.models.text import torch_threads
    from broaden.models.textrun import TextModel
    from broaden.progress import track

    if precision not in PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    mc_dropout = check_passes(mc_dropout)
    check_writable(out)
    errors_file = Path(errors_out) if errors_out else errors_path_for(out)
    check_writable(errors_file, "errors file")
    cols = columns or Columns()
    with torch_threads(num_threads or default_threads()):
        tm = model if isinstance(model, TextModel) else TextModel(model, device=device, batch_size=batch_size,
                                                                  window=window, calibrate=calibrate)
        spec = tm.spec
        source = str(data)
        table = read_data_file(data, [cols.id, *spec.text_cols])
        require_columns(table, spec.text_cols, source)
        n = table.num_rows
        if cols.id in table.column_names:
            if (row := first_null(table.column(cols.id))) is not None:
                raise DatasetError(f"{source}: column {cols.id!r}, row {row + 1}: missing id")
            ids = np.asarray(table.column(cols.id).to_pylist())
            where = RowRef(source, ids.tolist(), np.arange(n))
            check_ids(ids, where, cols.id)
            id_array = table.column(cols.id)
        else:
            ids = np.arange(n, dtype=np.int64)  # no id column: the row number is the id
            where = RowRef(source, [None] * n, np.arange(n))
            id_array = pa.chunked_array([pa.array(ids)])
        label_source = next((c for c in (spec.label_col, cols.label) if c in table.column_names), None)
        labels = (_pool_labels(table.column(label_source), tm.class_names, where, label_source)
                  if label_source else pa.nulls(n, pa.int64()))
        text_columns = spec.columns(table)
        bad = spec.empty_rows(text_columns)
        good = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
        streams = tm.streams(text_columns)

        bf16 = False
        check = None
        if precision == "bf16":
            if not bf16_hardware(device):
                raise ConfigError(f"precision='bf16': no native bf16 on {device} here; use auto or fp32")
            bf16 = True
        elif precision == "auto" and len(good):
            sample = good[:CALIBRATION_ITEMS]
            check = choose_precision(lambda _t, low: tm.predict([[s[i] for i in sample] for s in streams], low)[0],
                                     list(sample), device)
            bf16 = check.dtype == "bf16"

        committee = cols.committee(mc_dropout)
        produced = {cols.id, cols.label, cols.probs, cols.embedding, spec.label_col,
                    *cols.committee_in(table.column_names)}
        carried = [c for c in table.column_names if c not in produced]
        schema = _schema(table, carried, cols, id_array, committee).with_metadata(
            temperature_metadata(tm.temperature))
        with ParquetStreamWriter(out, schema) as writer, \
                track("scoring", len(good), show_progress) as advance:
            for start in range(0, len(good), window):
                rows = good[start:start + window]
                take = pa.array(rows)
                part = {cols.id: id_array.take(take), cols.label: labels.take(take)}
                probs, emb, passes = tm.predict_passes([[s[i] for i in rows] for s in streams], mc_dropout, seed,
                                                       bf16=bf16, advance=advance)
                part.update({c: table.column(c).take(take) for c in carried})
                part[cols.probs] = matrix_to_list_array(probs)
                part.update({c: matrix_to_list_array(p) for c, p in zip(committee, passes if mc_dropout else ())})
                part[cols.embedding] = matrix_to_list_array(emb.astype(np.float32))
                writer.write(pa.table(part).cast(schema))
        failures = sorted(bad.items())
        write_table(pa.table({"id": id_array.take(pa.array([r for r, _ in failures], pa.int64())),
                              "row": pa.array([r for r, _ in failures], pa.int64()),
                              "error": pa.array([f"column {c!r}: empty text" for _, c in failures], pa.string())}),
                    errors_file)
    used = (asdict(check) if check is not None else
            {"dtype": "bf16" if bf16 else "fp32", "reason": f"--precision {precision}"})
    return TextScoreResult(Path(out), errors_file, int(len(good)), len(failures), tm.temperature, precision=used)


def _schema(table: pa.Table, carried: list[str], cols: Columns, id_array: pa.ChunkedArray,
            committee: list[str]) -> pa.Schema:
    fields = [pa.field(cols.id, id_array.type), pa.field(cols.label, pa.int64())]
    fields += [table.schema.field(c) for c in carried]
    fields += [pa.field(c, pa.list_(pa.float32())) for c in (cols.probs, *committee)]
    fields.append(pa.field(cols.embedding, pa.list_(pa.float32())))
    return pa.schema(fields)
