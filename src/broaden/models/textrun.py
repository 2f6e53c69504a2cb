"""``broaden train --data FILE --text COL --label COL``: a text classifier from a team's own file.

Two modes on a local Hugging Face encoder (default: the packaged all-MiniLM-L6-v2):

- ``frozen``: sentence embeddings (masked mean pooling + L2 norm) computed once and cached, then an MLP
  head (:class:`~broaden.classifier.EmbeddingClassifier`). Seconds to minutes on a CPU.
- ``finetune``: the encoder and head end to end through :func:`broaden.models.train.train` (Adam, lr 4e-5,
  ≤ 5 epochs, early stop on a held-out split, resumable from ``RUN/checkpoint``, safetensors weights).

Pairs (``--pair``, two text columns: query then item) are scored as in the simulations: frozen embeds
both and joins them by :func:`~broaden.models.features.pair_features`; finetune reads "query [SEP] item".

A run directory holds ``text_run.json`` (what the files mean: mode, encoder, columns, class names, max
length; written last, so its presence means a complete run) and ``model/`` (frozen: the head; finetune:
the whole model). :func:`load_text_model` gives a :class:`TextModel` that ``broaden score`` runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden.datafiles import RowRef, check_ids, first_null, label_indices, read_data_file, require_columns, \
    text_column
from broaden._lazy import renamed
from broaden.errors import ConfigError, DatasetError
from broaden.io import write_table, write_text

RECORD_FILE = "text_run.json"
FORMAT = "broaden-text-run/1"
MODES = ("frozen", "finetune")
FINETUNE_MAX_LENGTH = 128  # CPU cost grows with length; headlines and short posts fit well within it
FROZEN_JOIN = ". "  # fields joined like one passage for a sentence encoder (title + description)


@dataclass
class TextRunSpec:
    """What a text run reads and how it models it (saved as ``text_run.json``)."""

    text_cols: list[str]
    label_col: str = "label"
    id_col: str | None = None  # None: `id` when the file has one, else the row number (from 0)
    class_names: list[str] = field(default_factory=list)
    pair: bool = False
    mode: str = "frozen"
    encoder: str = "minilm"  # "minilm" (packaged) or a local HF folder
    encoder_id: str = ""
    max_length: int = 0
    latent: str = ""

    def validate(self) -> TextRunSpec:
        if self.mode not in MODES:
            raise ConfigError(f"--encoder: {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.text_cols:
            raise ConfigError("--text: name at least one text column")
        if self.pair and len(self.text_cols) != 2:
            raise ConfigError(f"--pair: needs exactly two text columns (query, item), got {self.text_cols}")
        return self

    # -- texts
    def columns(self, table: pa.Table) -> list[list[str]]:
        return [text_column(table, c) for c in self.text_cols]

    def streams(self, columns: list[list[str]], sep_token: str | None) -> list[list[str]]:
        """The texts the encoder reads: one stream, or two (query, item) for a frozen pair."""
        if self.mode == "frozen":
            if self.pair:
                return [list(columns[0]), list(columns[1])]
            return [[FROZEN_JOIN.join(p for p in parts if p) for parts in zip(*columns)]]
        sep = f" {sep_token} " if sep_token else " "  # as models.data.Featurizer joins text fields
        return [[sep.join(parts) for parts in zip(*columns)]]

    def empty_rows(self, columns: list[list[str]]) -> dict[int, str]:
        """Row → the column (or joined columns) with nothing to read: every field empty, or for a pair
        either one."""
        bad: dict[int, str] = {}
        if self.pair:
            for name, values in zip(self.text_cols, columns):
                for i, t in enumerate(values):
                    if not t.strip():
                        bad.setdefault(i, name)
        else:
            joined = "+".join(self.text_cols)
            for i, parts in enumerate(zip(*columns)):
                if not any(p.strip() for p in parts):
                    bad[i] = joined
        return bad


def encoder_identity(path: Path, max_length: int) -> str:
    config = (path / "config.json").read_bytes()
    return f"{path.name}:{hashlib.sha256(config).hexdigest()[:16]}:max_length={max_length}"


def record_path(run: str | os.PathLike) -> Path | None:
    """``text_run.json`` of a run given as the run folder or its ``model`` folder; None if not a text run."""
    p = Path(run)
    for folder in (p, p.parent if p.name == "model" else None):
        if folder is not None and (folder / RECORD_FILE).is_file():
            return folder / RECORD_FILE
    return None


def is_text_run(run: str | os.PathLike) -> bool:
    return record_path(run) is not None


# ------------------------------------------------------------------------------------- reading
@dataclass
class LabeledText:
    """A labelled file read and checked: ids, label indices, raw text columns, class names."""

    ids: np.ndarray
    labels: np.ndarray
    columns: list[list[str]]
    class_names: tuple[str, ...]


def read_labeled(path: str | os.PathLike, spec: TextRunSpec, classes: Sequence[str] | None = None) -> LabeledText:
    """Read a labelled CSV / JSONL / Parquet file; errors name the file, column and row."""
    source = str(path)
    table = read_data_file(path, [spec.id_col or "id", *spec.text_cols])
    id_col = spec.id_col or ("id" if "id" in table.column_names else None)
    require_columns(table, [c for c in (id_col, spec.label_col, *spec.text_cols) if c], source)
    if table.num_rows == 0:
        raise DatasetError(f"{source}: no rows")
    if id_col:
        if (row := first_null(table.column(id_col))) is not None:
            raise DatasetError(f"{source}: column {id_col!r}, row {row + 1}: missing id")
        ids = np.asarray(table.column(id_col).to_pylist())
        where = RowRef(source, ids.tolist(), np.arange(table.num_rows))
        check_ids(ids, where, id_col)
    else:
        ids = np.arange(table.num_rows, dtype=np.int64)
        where = RowRef(source, [None] * len(ids), np.arange(table.num_rows))
    labels, names = label_indices(table.column(spec.label_col), classes, where, spec.label_col)
    columns = spec.columns(table)
    bad = spec.empty_rows(columns)
    if bad:
        row = min(bad)
        raise DatasetError(f"{where(bad[row], row)}: empty text")
    if len(names) < 2:
        raise DatasetError(f"{source}: column {spec.label_col!r} holds one class ({names[0]!r}); "
                           "a classifier needs at least two (name them all with --classes)")
    return LabeledText(ids, labels, columns, names)


# ------------------------------------------------------------------------------------ training
@dataclass
class TextTrainResult:
    run_dir: Path
    mode: str
    n_items: int
    class_names: list[str]
    summary: dict


@renamed(progress="show_progress")
def train_text(data: str | os.PathLike, out: str | os.PathLike, *, text: Sequence[str] | str, label: str = "label",
               classes: Sequence[str] | None = None, id_col: str | None = None, pair: bool = False,
               encoder: str = "frozen", model_path: str | os.PathLike | None = None,
               max_length: int | None = None, epochs: int = 5, batch_size: int = 32, lr: float = 4e-5,
               eval_fraction: float = 0.1, patience: int = 1, seed: int = 0, num_threads: int | None = None,
               resume: bool = True, max_steps: int | None = None, cache_dir: str | os.PathLike | None = None,
               show_progress: bool = True) -> TextTrainResult:
    """Train a text classifier on a labelled file and save it as a run ``out`` (see the module doc).

    ``epochs``, ``batch_size``, ``lr``, ``patience`` and ``max_steps`` apply to ``finetune``; ``frozen`` trains
    its head with :class:`~broaden.classifier.EmbeddingClassifier`'s defaults (early stop on
    ``eval_fraction``). ``classes`` fixes the class order (names, or the names of indices 0…C−1).
    """
    text_cols = [text] if isinstance(text, str) else list(text)
    spec = make_spec(text_cols, label=label, id_col=id_col, pair=pair, encoder=encoder, model_path=model_path,
                     max_length=max_length)
    items = read_labeled(data, spec, classes)
    return fit_text(items, spec, out, epochs=epochs, batch_size=batch_size, lr=lr, eval_fraction=eval_fraction,
                    patience=patience, seed=seed, num_threads=num_threads, resume=resume, max_steps=max_steps,
                    cache_dir=cache_dir, tag=Path(data).stem, show_progress=show_progress)


def make_spec(text_cols: list[str], *, label: str = "label", id_col: str | None = None, pair: bool = False,
              encoder: str = "frozen", model_path: str | os.PathLike | None = None,
              max_length: int | None = None) -> TextRunSpec:
    """A checked :class:`TextRunSpec`; the max length defaults to the mode's, within the encoder's positions."""
    from broaden.models.text import configured_max_length, resolve_model_path

    folder = resolve_model_path(model_path)
    mode_max = FINETUNE_MAX_LENGTH if encoder == "finetune" else configured_max_length(folder)
    positions = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    length = int(max_length or min(mode_max, positions or mode_max))
    return TextRunSpec(text_cols, label, id_col, [], pair, encoder,
                       "minilm" if model_path in (None, "minilm") else str(folder.resolve()),
                       encoder_identity(folder, length), length).validate()


@renamed(progress="show_progress")
def fit_text(items: LabeledText, spec: TextRunSpec, out: str | os.PathLike, *, epochs: int = 5,
             batch_size: int = 32, lr: float = 4e-5, eval_fraction: float = 0.1, patience: int = 1, seed: int = 0,
             num_threads: int | None = None, resume: bool = True, max_steps: int | None = None,
             cache_dir: str | os.PathLike | None = None, tag: str = "data", show_progress: bool = True) -> TextTrainResult:
    """Train on labelled texts already in memory and save the run ``out`` (what :func:`train_text` does
    after reading its file; simulations call it directly)."""
    from broaden.models.text import torch_threads

    spec.class_names = list(items.class_names)
    out = Path(out)
    with torch_threads(num_threads):
        if spec.mode == "frozen":
            summary = _train_frozen(items, spec, out, seed=seed, eval_fraction=eval_fraction,
                                    cache_dir=cache_dir, tag=tag, show_progress=show_progress)
        else:
            summary = _train_finetune(items, spec, out, epochs=epochs, batch_size=batch_size, lr=lr,
                                      eval_fraction=eval_fraction, patience=patience, seed=seed,
                                      num_threads=num_threads, resume=resume, max_steps=max_steps,
                                      show_progress=show_progress)
    if summary.get("stop_reason") != "max_steps":  # a paused fine-tune is not a usable run yet
        write_text(json.dumps({"format": FORMAT, **asdict(spec)}, indent=2), out / RECORD_FILE)
    return TextTrainResult(out, spec.mode, len(items.labels), spec.class_names, summary)


def _train_frozen(items: LabeledText, spec: TextRunSpec, out: Path, *, seed: int, eval_fraction: float,
                  cache_dir, tag: str, show_progress: bool) -> dict:
    from broaden.calibration import fit_calibration
    from broaden.models.classifier import EmbeddingClassifier
    from broaden.models.embedding_cache import cached_encode

    model = FrozenEncoder(spec)
    streams = spec.streams(items.columns, model.tokenizer.sep_token)
    vectors = [cached_encode(s, lambda t: model.embed(t, show_progress=show_progress), encoder_id=spec.encoder_id,
                             tag=f"{tag}-{'+'.join(spec.text_cols)}-{k}", cache_dir=cache_dir)
               for k, s in enumerate(streams)]
    features = model.features(vectors)
    spec.latent = ("pair features [u, v, |u-v|, u*v, cos] of the frozen sentence embeddings" if spec.pair
                   else "frozen sentence embedding (mean-pooled, L2-normalised)")
    clf = EmbeddingClassifier(seed=seed, val_fraction=eval_fraction)
    clf.fit(features, items.labels, num_classes=len(spec.class_names))
    clf.save(out / "model")
    last = clf.history_[clf.best_epoch_] if clf.history_ else {}
    val = clf.val_idx_
    calibration = fit_calibration(out / "model", clf.decision_function(features[val]), items.labels[val])
    return {"best_epoch": clf.best_epoch_, "epochs_run": len(clf.history_), "val_loss": last.get("val_loss"),
            "train_loss": last.get("train_loss"), "calibration": calibration}


def items_table(items: LabeledText) -> pa.Table:
    """The labelled file as a models.data items table (text fields renamed text0, text1…)."""
    cols = {"id": pa.array(items.ids.tolist()), "label": pa.array(items.labels, pa.int64())}
    cols.update({f"text{k}": pa.array(c, pa.string()) for k, c in enumerate(items.columns)})
    return pa.table(cols)


def _train_finetune(items: LabeledText, spec: TextRunSpec, out: Path, *, epochs: int, batch_size: int,
                    lr: float, eval_fraction: float, patience: int, seed: int, num_threads, resume: bool,
                    max_steps, show_progress: bool) -> dict:
    from broaden.models.config import ItemColumns, ModelConfig, RunConfig, TrainConfig
    from broaden.models.train import train

    table = items_table(items)
    # The items file is named by its content: a resumed run on changed data is refused (checkpoint
    # fingerprint differs) instead of mixing two datasets.
    digest = hashlib.sha256(json.dumps([items.ids.tolist(), items.labels.tolist(), items.columns,
                                        spec.class_names], default=str).encode()).hexdigest()[:16]
    path = out / "data" / f"train-{digest}.parquet"
    if not path.is_file():
        write_table(table, path)
    cfg = RunConfig(
        out=str(out), train_data=str(path),
        columns=ItemColumns(id="id", label="label", text_fields=[f"text{k}" for k in range(len(items.columns))]),
        model=ModelConfig(num_classes=len(spec.class_names), backbone="hf-text",
                          hf_path=None if spec.encoder == "minilm" else spec.encoder,
                          max_text_length=spec.max_length).validate(),
        train=TrainConfig(lr=lr, batch_size=batch_size, epochs=epochs, patience=patience,
                          eval_fraction=eval_fraction, seed=seed, num_threads=num_threads).validate())
    spec.latent = "[CLS] hidden state of the fine-tuned encoder"
    result = train(cfg, resume=resume, show_progress=show_progress, max_steps=max_steps)
    return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
            "eval_loss": result.best_metric, "calibration": result.calibration}


# ------------------------------------------------------------------------------------ inference
class FrozenEncoder:
    """The frozen sentence encoder of a run: bucketed embedding and the classifier input built from it."""

    def __init__(self, spec: TextRunSpec, device: str = "cpu", batch_size: int = 64, window: int = 4096):
        from broaden.models.fastinfer import BucketedRunner
        from broaden.models.text import load_hf_encoder, load_tokenizer, mean_pool, resolve_model_path

        path = resolve_model_path(None if spec.encoder == "minilm" else spec.encoder)
        if spec.encoder_id and encoder_identity(path, spec.max_length) != spec.encoder_id:
            raise ConfigError(f"{path}: this encoder differs from the one the run was trained with "
                              f"({spec.encoder_id})")
        self.spec = spec
        self.tokenizer = load_tokenizer(path)
        self.model = load_hf_encoder(path).to(device)

        def forward(ids, mask):
            import torch

            states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return (torch.nn.functional.normalize(mean_pool(states.float(), mask), p=2, dim=1),)

        self.runner = BucketedRunner(self.tokenizer, forward, max_length=spec.max_length, batch_size=batch_size,
                                     window=window, device=device)

    def embed(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        from broaden.progress import track

        with track("embedding texts", len(texts), show_progress) as advance:
            return self.runner.run(list(texts), advance)[0]

    def features(self, vectors: list[np.ndarray]) -> np.ndarray:
        from broaden.models.features import pair_features

        return pair_features(vectors[0], vectors[1]) if self.spec.pair else vectors[0]


class TextModel:
    """A saved text run, ready to score: ``predict(streams) -> (probs, embedding)``.

    ``calibrate`` applies the temperature ``broaden train`` fitted on its validation split
    (``model/calibration.json``, :mod:`broaden.calibration`); ``temperature`` is the T in use (None: none).
    """

    def __init__(self, run: str | os.PathLike, *, device: str = "cpu", batch_size: int = 64, window: int = 4096,
                 calibrate: bool = True):
        from broaden.calibration import read_calibration, scaler_from

        rec = record_path(run)
        if rec is None:
            raise ConfigError(f"{run}: not a run of `broaden train --data` (no {RECORD_FILE})")
        try:
            raw = json.loads(rec.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{rec}: not valid JSON ({exc})") from exc
        if raw.pop("format", None) != FORMAT:
            raise ConfigError(f"{rec}: unknown format, expected {FORMAT!r}")
        try:
            self.spec = TextRunSpec(**raw).validate()
        except TypeError as exc:
            raise ConfigError(f"{rec}: {exc}") from exc
        self.run_dir = rec.parent
        self.device = device
        if self.spec.mode == "frozen":
            from broaden.models.classifier import EmbeddingClassifier

            self.encoder = FrozenEncoder(self.spec, device, batch_size, window)
            self.head = EmbeddingClassifier.load(self.run_dir / "model")
            self.tokenizer = self.encoder.tokenizer
            self.runner = self.encoder.runner
            model_dir = self.run_dir / "model"
        else:
            model_dir = self._load_finetuned(batch_size, window)
        self._scaler = scaler_from(read_calibration(model_dir)) if calibrate else None
        self.temperature = self._scaler.temperature_ if self._scaler is not None else None

    def _head_probs(self, features: np.ndarray) -> np.ndarray:
        logits = self.head.decision_function(features)
        return self._scaler.transform(logits) if self._scaler is not None else self.head.predict_proba(features)

    def _load_finetuned(self, batch_size: int, window: int) -> Path:
        import torch

        from broaden.models.checkpoint import load_model
        from broaden.models.fastinfer import BucketedRunner
        from broaden.models.network import Batch

        loaded = load_model(self.run_dir, device=self.device)
        model, self.tokenizer = loaded.model, loaded.tokenizer
        self.network = model

        def forward(ids, mask):
            out = model(Batch(input_ids=ids, text_mask=mask))
            return torch.softmax(out.logits.float() / (self.temperature or 1.0), dim=-1), out.h_cls

        self.runner = BucketedRunner(self.tokenizer, forward, max_length=loaded.config.max_text_length,
                                     batch_size=batch_size, window=window, device=self.device)
        return loaded.path

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def streams(self, columns: list[list[str]]) -> list[list[str]]:
        return self.spec.streams(columns, self.tokenizer.sep_token)

    def predict(self, streams: list[list[str]], bf16: bool = False,
                advance: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (n, C) and the latent (n, d) for row-aligned text streams."""
        probs, features, _ = self.predict_passes(streams, 0, bf16=bf16, advance=advance)
        return probs, features

    def predict_passes(self, streams: list[list[str]], mc_dropout: int, seed: int = 0, *, bf16: bool = False,
                       advance: Callable[[int], None] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(probabilities, latent, passes): with ``mc_dropout`` = N ≥ 2, N Monte Carlo dropout passes
        (N, n, C) seeded by ``seed`` (:mod:`broaden.models.mcdropout`) whose mean is the probabilities; the
        latent is always the deterministic pass's. A frozen run samples its head's dropout only: its encoder
        never trained, so it had no dropout to sample (and it runs once, not N times)."""
        from broaden.models.mcdropout import mc_passes, mean_probs

        self.runner.bf16 = bf16
        if self.spec.mode == "frozen":
            features = self.encoder.features([self.runner.run(s)[0] for s in streams])
            probs = self._head_probs(features).astype(np.float32)
            net, sample = self.head.model_, lambda: self._head_probs(features)
        else:
            probs, features = self.runner.run(streams[0])
            net, sample = self.network, lambda: self.runner.run(streams[0])[0]
        passes = mc_passes(net, sample, mc_dropout, seed) if mc_dropout else None
        if passes is not None:
            probs = mean_probs(passes)
        if advance is not None:
            advance(len(streams[0]))
        return probs, features, passes


def load_text_model(run: str | os.PathLike, **kwargs) -> TextModel:
    return TextModel(run, **kwargs)
