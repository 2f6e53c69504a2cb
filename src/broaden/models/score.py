"""``broaden score``: batched inference over an items table, writing the scored table (DESIGN §5).

Output: the items' columns (except ``frames``) carried through, plus ``probs`` (C softmax probabilities),
``embedding`` (h_cls, float32) and, for ``vlmae`` models, ``audio_attention`` (the head-averaged Eq. 7
weights over the item's valid audio positions; empty for an item without audio). Items are streamed in
record batches and the output appears atomically when complete.

An item whose frames or audio cannot be used is not scored; it is listed with its row and reason in the
errors file (``OUT`` with ``.errors.parquet`` in place of ``.parquet``; always written, empty when all
items scored) and counted in the returned :class:`ScoreResult`. It never aborts the run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden.io import Columns, ParquetStreamWriter, Validator, count_rows, iter_batches, \
    matrix_to_list_array, read_table, write_table
from broaden.models.audio_cache import AudioCache
from broaden.models.checkpoint import load_model
from broaden.models.data import Featurizer, check_item_columns, items_base_dir
from broaden.models.inference import Scored, infer
from broaden.models.progress import track
from broaden.models.text import torch_threads

ATTENTION_COL = "audio_attention"


@dataclass
class ScoreResult:
    out: Path
    errors_path: Path
    n_scored: int
    n_failed: int


def errors_path_for(out: str | os.PathLike) -> Path:
    p = Path(out)
    return p.with_name((p.name[: -len(".parquet")] if p.name.endswith(".parquet") else p.name) + ".errors.parquet")


def _default_cache_dir(model_folder: Path) -> Path:
    run = model_folder.parent if model_folder.name == "model" else model_folder
    return run / "audio_cache"


def _list_column(values: list[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(v) for v in values])
    flat = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))


def score(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
          batch_size: int = 128, columns: Columns | None = None, errors_out: str | os.PathLike | None = None,
          audio_cache: str | os.PathLike | None = None, whisper_path: str | None = None,
          device: str = "cpu", num_threads: int | None = None, progress: bool = True) -> ScoreResult:
    """Score every item of ``data`` with the model saved in ``model`` (a run directory or model folder).

    ``columns`` names the id / label columns (read from and written to the same names) and the output
    probs / embedding columns; by default the id / label names the model was trained with.
    """
    with torch_threads(num_threads):
        loaded = load_model(model, device=device, whisper_path=whisper_path)
        item_cols = loaded.columns
        if columns is not None:
            item_cols.id, item_cols.label = columns.id, columns.label
        out_cols = columns or Columns(id=item_cols.id, label=item_cols.label)
        config = loaded.config
        schema = check_item_columns(data, item_cols, config, labels=False)
        # Duplicate ids are a table-level fault: find them before any scoring work, reading one column.
        read_table(data, columns=[item_cols.id],
                   validator=Validator(columns=Columns(id=item_cols.id), require=("id",)))
        model_ = loaded.model
        cache = None
        if model_.audio is not None and config.freeze_audio:
            cache = AudioCache(audio_cache or _default_cache_dir(loaded.path), model_.audio)
        feat = Featurizer(config, item_cols, loaded.tokenizer, audio=model_.audio, cache=cache,
                          base_dir=items_base_dir(data))
        produced = {out_cols.probs, out_cols.embedding, ATTENTION_COL}
        carried = [f for f in schema if f.name != item_cols.frames and f.name not in produced]
        fields = [*carried, pa.field(out_cols.probs, pa.list_(pa.float32())),
                  pa.field(out_cols.embedding, pa.list_(pa.float32()))]
        if config.fusion == "vlmae":
            fields.append(pa.field(ATTENTION_COL, pa.list_(pa.float32())))
        out_schema = pa.schema(fields)
        failures: list[dict] = []
        offset = n_scored = 0
        with ParquetStreamWriter(out, out_schema) as writer, \
                track("scoring", count_rows(data), progress) as advance:
            for scored in infer(model_, feat, iter_batches(data, batch_size=batch_size), device=device):
                writer.write(_output_table(scored, carried, out_schema, out_cols))
                ids = scored.table.column(item_cols.id).to_pylist()
                failures += [{"id": ids[r], "row": offset + r, "error": msg} for r, msg in scored.errors]
                n_scored += len(scored.rows)
                offset += scored.table.num_rows
                advance(scored.table.num_rows)
        errors_file = Path(errors_out) if errors_out else errors_path_for(out)
        id_type = schema.field(item_cols.id).type
        write_table(pa.table({"id": pa.array([f["id"] for f in failures], id_type),
                              "row": pa.array([f["row"] for f in failures], pa.int64()),
                              "error": pa.array([f["error"] for f in failures], pa.string())}), errors_file)
    return ScoreResult(Path(out), errors_file, n_scored, len(failures))


def _output_table(scored: Scored, carried: list[pa.Field], schema: pa.Schema, cols: Columns) -> pa.Table:
    taken = scored.table.take(pa.array(scored.rows, pa.int64()))
    arrays = [taken.column(f.name) for f in carried]
    arrays += [matrix_to_list_array(scored.probs), matrix_to_list_array(scored.embedding)]
    if scored.attention is not None:
        arrays.append(_list_column(scored.attention))
    return pa.Table.from_arrays(arrays, schema=schema)

