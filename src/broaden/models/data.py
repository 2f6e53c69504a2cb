"""Items tables → model batches, with per-item error reporting.

Items table schema (Parquet file or directory; names configurable through :class:`ItemColumns`):

============== =================================== ==========================================================
column         type                                meaning
============== =================================== ==========================================================
``id``         string or integer, unique           item id, carried into the scored table
``label``      integer 0…C−1, null = unlabelled    needed for training rows; optional when scoring
text fields    string (null = empty)               ``text_fields`` (default ``["text"]``), joined with [SEP]
``frames``     list of frames (optional)           each frame: list of C·H·W numbers, image bytes, or a path
                                                   to an image / ``.npy`` file (see :mod:`.visual`)
``audio_path`` string (optional, null = no audio)  WAV (any soundfile format) path; relative paths are
                                                   taken from the items file's folder (see :mod:`.audio`)
============== =================================== ==========================================================

``frames`` is required when the model has ``num_frames > 0`` and ``audio_path`` when it fuses audio. An
item whose frames or audio cannot be used is left out of the batch and reported with its row and reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from broaden.errors import ScoredTableError
from broaden.io import Columns, Validator, labels_array, parquet_files, read_schema, read_table
from broaden.models.audio import AudioError, WhisperAudio, load_audio
from broaden.models.audio_cache import AudioCache
from broaden.models.config import ItemColumns, ModelConfig
from broaden.models.network import Batch
from broaden.models.visual import FrameError, decode_frames, is_numeric_frames, numeric_frames


def items_base_dir(path: str | os.PathLike) -> Path:
    """Folder that relative frame / audio paths in an items table are resolved against."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def required_columns(columns: ItemColumns, config: ModelConfig, *, labels: bool) -> list[str]:
    names = [columns.id, *columns.text_fields]
    if labels:
        names.append(columns.label)
    if config.num_frames > 0:
        names.append(columns.frames)
    if config.fusion != "none":
        names.append(columns.audio)
    return names


def check_item_columns(path: str | os.PathLike, columns: ItemColumns, config: ModelConfig, *,
                       labels: bool) -> pa.Schema:
    """Fail early, naming the file, when an items table lacks a column the model needs."""
    for f in parquet_files(path):
        schema = read_schema(f)
        missing = [c for c in required_columns(columns, config, labels=labels) if c not in schema.names]
        if missing:
            raise ScoredTableError(
                f"{f}: items table lacks column(s) {', '.join(map(repr, missing))} needed by this model; "
                f"found {', '.join(map(repr, schema.names))}")
    return read_schema(path)


def read_items(path: str | os.PathLike, columns: ItemColumns, config: ModelConfig, *,
               labels: bool = True) -> pa.Table:
    """Read a whole items table, checking columns, unique ids and integer labels (null = unlabelled; a
    negative label is an error, not a silent "unlabelled")."""
    check_item_columns(path, columns, config, labels=labels)
    validator = Validator(columns=Columns(id=columns.id, label=columns.label),
                          require=("id", "label") if labels else ("id",))
    table = read_table(path, columns=required_columns(columns, config, labels=labels), validator=validator)
    if labels:
        col = table.column(columns.label)
        negative = np.flatnonzero(pc.fill_null(pc.less(col, 0), False).to_numpy(zero_copy_only=False))
        if negative.size:
            r = int(negative[0])
            raise ScoredTableError(f"{path}: column {columns.label!r} row {r}: label {col[r].as_py()} is negative; "
                                   "labels are 0…C−1, null for an unlabelled item")
    return table


@dataclass
class Prepared:
    """A featurised slice: the batch of usable rows, their positions, and ``(row, reason)`` failures."""

    batch: Batch | None
    rows: np.ndarray
    errors: list[tuple[int, str]] = field(default_factory=list)
    ids: list = field(default_factory=list)


class Featurizer:
    """Turns rows of an items table into a :class:`~broaden.models.network.Batch`.

    Audio goes through ``cache`` when the encoder is frozen (encoded once, stored float16) and is
    otherwise turned into Mel features for the encoder to run inside the forward pass.
    """

    def __init__(self, config: ModelConfig, columns: ItemColumns, tokenizer, *,
                 audio: WhisperAudio | None = None, cache: AudioCache | None = None,
                 base_dir: str | os.PathLike = "."):
        self.config = config
        self.columns = columns
        self.tokenizer = tokenizer
        self.audio = audio
        self.cache = cache
        self.base_dir = Path(base_dir)

    def texts(self, table: pa.Table) -> list[str]:
        sep = f" {self.tokenizer.sep_token} " if self.tokenizer.sep_token else " "
        fields = [table.column(name).to_pylist() for name in self.columns.text_fields]
        return [sep.join("" if v is None else str(v) for v in values) for values in zip(*fields)]

    def _frames(self, table: pa.Table, errors: dict[int, str]) -> list[np.ndarray | None]:
        cfg = self.config
        col = table.column(self.columns.frames)
        opts = dict(num_frames=cfg.num_frames, channels=cfg.frame_channels, frame_size=cfg.frame_size)
        if is_numeric_frames(col.type):
            decoded = numeric_frames(col, **opts)
        else:
            decoded = []
            for cell in col.to_pylist():
                try:
                    decoded.append(decode_frames(cell, base_dir=self.base_dir, **opts))
                except FrameError as exc:
                    decoded.append(exc)
        out: list[np.ndarray | None] = []
        for i, value in enumerate(decoded):
            if isinstance(value, FrameError):
                errors[i] = f"column {self.columns.frames!r}: {value}"
                value = None
            out.append(value)
        return out

    def _audio_paths(self, table: pa.Table) -> list[Path | None]:
        return [None if v is None or str(v) == "" else
                (Path(v) if Path(v).is_absolute() else self.base_dir / str(v))
                for v in table.column(self.columns.audio).to_pylist()]

    def _audio(self, table: pa.Table, errors: dict[int, str]) -> list:
        """Per row: a float16 sequence (cache), a waveform (trainable encoder), None for no audio."""
        paths = self._audio_paths(table)
        present = [i for i, p in enumerate(paths) if p is not None]
        if self.cache is not None:
            loaded = self.cache.get_many([paths[i] for i in present])
        else:
            loaded = []
            for i in present:
                try:
                    loaded.append(load_audio(paths[i]))
                except AudioError as exc:
                    loaded.append(exc)
        out: list = [None] * len(paths)
        for i, value in zip(present, loaded):
            if isinstance(value, AudioError):
                errors.setdefault(i, f"column {self.columns.audio!r}: {value}")
            else:
                out[i] = value
        return out

    def __call__(self, table: pa.Table | pa.RecordBatch, *, labels: bool = False) -> Prepared:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        errors: dict[int, str] = {}
        frames = self._frames(table, errors) if self.config.num_frames > 0 else None
        audio = self._audio(table, errors) if self.config.fusion != "none" else None
        ids = table.column(self.columns.id).to_pylist()
        rows = np.array([i for i in range(table.num_rows) if i not in errors], dtype=np.int64)
        error_list = sorted(errors.items())
        if rows.size == 0:
            return Prepared(None, rows, error_list, [])
        texts = self.texts(table)
        enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                             max_length=self.config.max_text_length, return_tensors="pt")
        batch = Batch(input_ids=enc["input_ids"], text_mask=enc["attention_mask"])
        if labels:
            batch.labels = torch.as_tensor(labels_array(table.column(self.columns.label))[rows])
        if frames is not None:
            batch.frames, batch.frame_mask = pad_sequences([frames[i] for i in rows])
        if audio is not None:
            self._audio_batch(batch, [audio[i] for i in rows])
        return Prepared(batch, rows, error_list, [ids[i] for i in rows])

    def _audio_batch(self, batch: Batch, items: list) -> None:
        if self.cache is not None:
            dim = self.audio.dim
            seqs = [np.zeros((0, dim), np.float16) if a is None else a for a in items]
            padded, mask = pad_sequences(seqs, min_length=1)
            batch.audio, batch.audio_mask = padded.float(), mask
            return
        waves = [np.zeros(1, np.float32) if w is None else w for w in items]
        batch.mel, lengths = self.audio.features(waves)
        batch.audio_lengths = lengths * torch.as_tensor([w is not None for w in items], dtype=torch.long)


def pad_sequences(items: list[np.ndarray], min_length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length arrays (L_i, ...) into a zero-padded tensor (B, L, ...) and a mask (B, L)."""
    length = max([min_length, *(len(x) for x in items)])
    tail = items[0].shape[1:]
    out = np.zeros((len(items), length, *tail), dtype=items[0].dtype)
    mask = np.zeros((len(items), length), dtype=bool)
    for i, x in enumerate(items):
        out[i, : len(x)] = x
        mask[i, : len(x)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)
