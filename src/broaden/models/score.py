"""``broaden score``: batched inference over an items table, writing the scored table (DESIGN §5).

Output: the items' columns (except ``frames``) carried through, plus ``probs`` (C softmax probabilities),
``embedding`` (h_cls, float32) and, for ``vlmae`` models, ``audio_attention`` (the head-averaged Eq. 7
weights over the item's valid audio positions; empty for an item without audio). With ``mc_dropout`` = N,
also the N Monte Carlo dropout passes as committee columns ``probs_m0 … probs_m{N−1}`` and their mean as
``probs`` (:mod:`broaden.models.mcdropout`). Items are streamed in record batches and the output appears
atomically when complete.

An item whose frames or audio cannot be used is not scored; it is listed with its row and reason in the
errors file (``OUT`` with ``.errors.parquet`` in place of ``.parquet``; always written, empty when all
items scored) and counted in the returned :class:`ScoreResult`. It never aborts the run.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broaden._lazy import renamed
from broaden.io import (
    Columns, ParquetStreamWriter, Validator, check_writable, count_rows, matrix_to_list_array, read_table, write_table,
)
from broaden.calibration import model_temperature, temperature_metadata
from broaden.models.audio_cache import AudioCache
from broaden.models.checkpoint import load_model
from broaden.models.data import Featurizer, check_item_columns, items_base_dir
from broaden.models.inference import infer
from broaden.progress import track
from broaden.models.text import torch_threads

ATTENTION_COL = "audio_attention"
ERROR_COL = "_score_error"  # worker output only: why a row could not be scored (null when it was)


@dataclass
class ScoreResult:
    out: Path
    errors_path: Path
    n_scored: int
    n_failed: int
    temperature: float | None = None  # the temperature applied to the probabilities (None: uncalibrated)


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


class BatchScorer:
    """A loaded model and featuriser that score one batch of items wherever it runs (this process or an
    engine's worker): every input row comes back in input order, with ``ERROR_COL`` set where an item
    could not be scored (its outputs are then null)."""

    def __init__(self, model, whisper_path, audio_cache, columns, base_dir, device, *, loaded=None,
                 mc_dropout: int = 0, seed: int = 0, temperature: float | None = None):
        loaded = loaded or load_model(model, device=device, whisper_path=whisper_path)
        self.temperature = temperature  # read once by score(), not again in every engine worker
        self.device, self.model = device, loaded.model
        self.mc_dropout, self.seed = mc_dropout, seed
        self.item_cols, self.out_cols = _score_columns(loaded, columns)
        config = loaded.config
        cache = None
        if self.model.audio is not None and config.freeze_audio:
            cache = AudioCache(audio_cache or _default_cache_dir(loaded.path), self.model.audio)
        self.feat = Featurizer(config, self.item_cols, loaded.tokenizer, audio=self.model.audio, cache=cache,
                               base_dir=base_dir)
        self.vlmae = config.fusion == "vlmae"

    def __call__(self, table: pa.Table) -> pa.Table:
        scored = next(infer(self.model, self.feat, [table], device=self.device, mc_dropout=self.mc_dropout,
                            seed=self.seed, temperature=self.temperature or 1.0))
        n = table.num_rows
        ok = np.zeros(n, dtype=bool)
        ok[scored.rows] = True

        def column(values: np.ndarray) -> pa.Array:  # every input row, null where the item was not scored
            full = np.full((n, values.shape[1]), np.nan, np.float32)
            full[scored.rows] = values
            return _nullable(matrix_to_list_array(full), ok)

        arrays = {self.out_cols.probs: column(scored.probs)}
        for name, member in zip(self.out_cols.committee(self.mc_dropout), scored.passes if self.mc_dropout else ()):
            arrays[name] = column(member)
        arrays[self.out_cols.embedding] = column(scored.embedding)
        if self.vlmae:
            att = [np.zeros(0, np.float32)] * n
            for r, a in zip(scored.rows, scored.attention or []):
                att[r] = a
            arrays[ATTENTION_COL] = _nullable(_list_column(att), ok)
        errors = [None] * n
        for r, msg in scored.errors:
            errors[r] = msg
        arrays[ERROR_COL] = pa.array(errors, pa.string())
        for name, arr in arrays.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, arr)
        return table


def _nullable(arr: pa.Array, ok: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(ok), arr, pa.nulls(len(arr), arr.type))


def _score_columns(loaded, columns: Columns | None) -> tuple:
    item_cols = loaded.columns
    if columns is not None:
        item_cols.id, item_cols.label = columns.id, columns.label
    return item_cols, columns or Columns(id=item_cols.id, label=item_cols.label)


@renamed(progress="show_progress")
def score(model: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
          batch_size: int = 128, columns: Columns | None = None, errors_out: str | os.PathLike | None = None,
          audio_cache: str | os.PathLike | None = None, whisper_path: str | None = None,
          device: str = "cpu", num_threads: int | None = None, show_progress: bool = True,
          engine=None, mc_dropout: int = 0, seed: int = 0, calibrate: bool = True) -> ScoreResult:
    """Score every item of ``data`` with the model saved in ``model`` (a run directory or model folder).

    ``columns`` names the id / label columns (read from and written to the same names) and the output
    probs / embedding columns; by default the id / label names the model was trained with. ``engine``
    ("local", "ray" or a :class:`broaden.engines.Engine`) runs the batches; on Ray each actor loads the
    model once and takes a GPU when the cluster has them (``device`` then only applies to local runs).
    ``mc_dropout`` = N ≥ 2 writes N Monte Carlo dropout passes (seeded by ``seed``) as ``probs_m0 …`` and
    their mean as ``probs`` (Gal & Ghahramani 2016), for the ``bald`` and ``qbc`` strategies.
    ``calibrate`` applies the temperature ``broaden train`` fitted (``model/calibration.json``; Guo et al.
    2017) to every probability written; T is recorded in the output's metadata (``broaden.temperature``) and
    the result.
    """
    from broaden.engines import get_engine
    from broaden.models.mcdropout import check_passes

    mc_dropout = check_passes(mc_dropout)
    runner = get_engine(engine)
    check_writable(out)  # a folder or unwritable --out fails now, not after scoring every item
    with torch_threads(num_threads):
        loaded = load_model(model, device=device, whisper_path=whisper_path)
        item_cols, out_cols = _score_columns(loaded, columns)
        config = loaded.config
        schema = check_item_columns(data, item_cols, config, labels=False)
        # Duplicate ids are a table-level fault: find them before any scoring work, reading one column.
        read_table(data, columns=[item_cols.id],
                   validator=Validator(columns=Columns(id=item_cols.id), require=("id",)))
        committee = out_cols.committee(mc_dropout)
        # An items table that is itself a scored table gets fresh outputs, never stale committee columns.
        produced = {out_cols.probs, out_cols.embedding, ATTENTION_COL, *out_cols.committee_in(schema.names)}
        carried = [f for f in schema if f.name != item_cols.frames and f.name not in produced]
        fields = [*carried, *(pa.field(c, pa.list_(pa.float32())) for c in (out_cols.probs, *committee)),
                  pa.field(out_cols.embedding, pa.list_(pa.float32()))]
        if config.fusion == "vlmae":
            fields.append(pa.field(ATTENTION_COL, pa.list_(pa.float32())))
        temperature = model_temperature(loaded.path) if calibrate else None
        out_schema = pa.schema(fields, metadata=temperature_metadata(temperature))
        local = runner.name == "local"
        make = functools.partial(BatchScorer, str(model), whisper_path, audio_cache, columns, items_base_dir(data),
                                 loaded=loaded if local else None, mc_dropout=mc_dropout, seed=seed,
                                 temperature=temperature)
        failures: list[dict] = []
        offset = n_scored = 0
        with ParquetStreamWriter(out, out_schema) as writer, \
                track("scoring", count_rows(data), show_progress and local) as advance:
            for part in runner.map_batches(make, data, batch_size=batch_size, device=device if local else None,
                                           description="scoring"):
                bad = pc.is_valid(part.column(ERROR_COL)).to_numpy(zero_copy_only=False)
                writer.write(part.filter(pa.array(~bad)).select(out_schema.names).cast(out_schema))
                ids = part.column(item_cols.id).to_pylist()
                errs = part.column(ERROR_COL).to_pylist()
                failures += [{"id": ids[r], "row": offset + int(r), "error": errs[r]} for r in np.flatnonzero(bad)]
                n_scored += int((~bad).sum())
                offset += part.num_rows
                advance(part.num_rows)
        errors_file = Path(errors_out) if errors_out else errors_path_for(out)
        id_type = schema.field(item_cols.id).type
        write_table(pa.table({"id": pa.array([f["id"] for f in failures], id_type),
                              "row": pa.array([f["row"] for f in failures], pa.int64()),
                              "error": pa.array([f["error"] for f in failures], pa.string())}), errors_file)
    return ScoreResult(Path(out), errors_file, n_scored, len(failures), temperature)
