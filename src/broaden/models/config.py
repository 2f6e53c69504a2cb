"""Model, item-table and training settings, read from TOML (tomllib) or YAML.

A config file has a top-level ``out`` (the run directory) and three tables::

    out = "runs/clickbait"
    [data]                       # ItemColumns + where the items are
    train = "train.parquet"      # paths are relative to the config file
    eval = "eval.parquet"        # optional; else `eval_fraction` of train is held out
    text_fields = ["title"]
    [model]                      # ModelConfig
    backbone = "hf-text"
    fusion = "none"
    [train]                      # TrainConfig (paper defaults: Adam, lr 4e-5, batch 64, ≤ 5 epochs)
    lr = 4e-5

Unknown keys are errors (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broaden.errors import ConfigError
from broaden.settings import dataclass_from_dict as _build

BACKBONES = ("mome", "hf-text")
FUSIONS = ("none", "avgpool", "maxpool", "vlmae")


@dataclass
class ItemColumns:
    """Columns of an items table (see :mod:`broaden.models.data` for the schema)."""

    id: str = "id"
    label: str = "label"
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    frames: str = "frames"
    audio: str = "audio_path"


@dataclass
class ModelConfig:
    """Architecture of the classifier (DESIGN §1): VL backbone → [h_cls ; audio vector] → MLP.

    ``backbone="mome"`` builds the mixture-of-modality-experts transformer of :mod:`.mome` with
    ``width``/``layers``/``heads``/``vl_layers``; ``"hf-text"`` wraps a local HF encoder (``hf_path``;
    ``None`` = bundled all-MiniLM-L6-v2). ``num_frames = 0`` means no visual tokens. ``fusion`` is
    ``none`` | ``avgpool`` | ``maxpool`` (Eq. 6) | ``vlmae`` (Eq. 7); any audio fusion needs a Whisper
    encoder from ``whisper_path`` (local checkpoint) or ``whisper_config`` (a WhisperConfig dict).
    """

    num_classes: int | None = None  # None: inferred from the training labels
    backbone: str = "mome"
    tokenizer: str | None = None  # local HF folder for mome's tokenizer; None = bundled MiniLM's
    max_text_length: int = 64
    hf_path: str | None = None
    freeze_text: bool = False
    width: int = 256
    layers: int = 4
    heads: int = 4
    vl_layers: int = 1
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    num_frames: int = 0
    frame_channels: int = 3
    frame_size: list[int] = field(default_factory=lambda: [224, 224])
    patch_size: int | None = 16  # None: one token per frame
    fusion: str = "none"
    whisper_path: str | None = None
    whisper_config: dict[str, Any] | None = None
    freeze_audio: bool = True
    audio_pool_stride: int = 1
    att_dim: int = 256
    att_heads: int = 1
    mlp_layers: int = 2
    mlp_hidden: int = 256
    classifier_dropout: float = 0.1

    def validate(self, where: str = "model") -> ModelConfig:
        def bad(key, msg):
            raise ConfigError(f"{where}.{key}: {msg}")

        if self.backbone not in BACKBONES:
            bad("backbone", f"{self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.fusion not in FUSIONS:
            bad("fusion", f"{self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.fusion != "none" and not (self.whisper_path or self.whisper_config):
            bad("fusion", f"{self.fusion!r} needs an audio encoder: set whisper_path or whisper_config")
        if self.num_classes is not None and self.num_classes < 2:
            bad("num_classes", f"must be at least 2, got {self.num_classes}")
        if self.width % self.heads:
            bad("heads", f"width {self.width} is not divisible by heads {self.heads}")
        if not 0 <= self.vl_layers <= self.layers:
            bad("vl_layers", f"must be within 0..layers ({self.layers}), got {self.vl_layers}")
        if self.att_dim % self.att_heads:
            bad("att_heads", f"att_dim {self.att_dim} is not divisible by att_heads {self.att_heads}")
        if self.mlp_layers not in (2, 3):
            bad("mlp_layers", f"the classifier has 2 or 3 layers, got {self.mlp_layers}")
        if len(self.frame_size) != 2:
            bad("frame_size", f"expected [height, width], got {self.frame_size}")
        if self.patch_size is not None and any(s % self.patch_size for s in self.frame_size):
            bad("patch_size", f"{self.patch_size} does not divide frame_size {self.frame_size}")
        if self.audio_pool_stride < 1:
            bad("audio_pool_stride", f"must be ≥ 1, got {self.audio_pool_stride}")
        return self


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the paper's (Adam, lr 4e-5, batch 64, ≤ 5 epochs, early stop).

    ``eval_metric`` is ``loss`` (eval cross-entropy), ``accuracy``, or any scalar key of
    :func:`broaden.metrics.evaluate` (``auc``, ``f1``, ``macro_f1``, ``multiclass_loss``…); training stops
    once it has not improved by ``min_delta`` for ``patience`` epochs. ``class_weights`` is ``None``,
    ``"balanced"`` (n / (C·n_c), as scikit-learn) or one weight per class. ``checkpoint_every`` saves a
    resumable checkpoint every that many steps (besides every epoch end).
    """

    lr: float = 4e-5
    batch_size: int = 64
    epochs: int = 5
    patience: int = 1
    min_delta: float = 0.0
    eval_metric: str = "loss"
    eval_fraction: float = 0.1
    class_weights: str | list[float] | None = None
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    eval_batch_size: int = 128
    checkpoint_every: int | None = None
    skip_bad_items: bool = False  # True: leave out items whose frames/audio fail (listed in errors_*.parquet)
    audio_cache: str | None = None  # None: <run>/audio_cache

    def validate(self, where: str = "train") -> TrainConfig:
        # patience 0 would stop after the first epoch whatever it scored; early stopping cannot be turned off
        # by it (set patience = epochs for that).
        for key in ("lr", "batch_size", "epochs", "patience", "eval_batch_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: must be positive, got {getattr(self, key)}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"{where}.eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        cw = self.class_weights
        if isinstance(cw, str) and cw != "balanced":
            raise ConfigError(f"{where}.class_weights: expected 'balanced' or a list of numbers, got {cw!r}")
        return self


@dataclass
class RunConfig:
    """Everything ``broaden train`` needs: where the run goes, the data, the model and the optimiser."""

    out: str
    train_data: str
    eval_data: str | None = None
    columns: ItemColumns = field(default_factory=ItemColumns)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)




def model_config_from_dict(values: dict, where: str = "model") -> ModelConfig:
    return _build(ModelConfig, values, where).validate(where)


def columns_from_dict(values: dict, where: str = "data") -> ItemColumns:
    cols = _build(ItemColumns, values, where)
    if isinstance(cols.text_fields, str):
        cols.text_fields = [cols.text_fields]
    return cols


def parse_config_text(text: str, suffix: str, source: str) -> dict:
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
            return data if data is not None else {}
        if suffix == ".json":
            return json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"{source}: cannot parse ({exc})") from exc
    except Exception as exc:  # yaml.YAMLError has no common base with the others
        raise ConfigError(f"{source}: cannot parse ({exc})") from exc
    raise ConfigError(f"{source}: unsupported config format {suffix!r} (use .toml, .yaml or .json)")


def load_run_config(path: str | os.PathLike, overrides: dict | None = None) -> RunConfig:
    """Read a TOML/YAML/JSON training config; relative paths are taken from the config's folder."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    raw = parse_config_text(p.read_text(encoding="utf-8"), p.suffix.lower(), str(p))
    return run_config_from_dict(raw, base=p.parent, source=str(p), overrides=overrides)


def run_config_from_dict(raw: dict, base: str | os.PathLike = ".", source: str = "config",
                         overrides: dict | None = None) -> RunConfig:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in (overrides or {}).items():
        section, _, name = key.rpartition(".")
        (raw.setdefault(section, {}) if section else raw)[name] = value
    allowed = {"out", "data", "model", "train"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    data = dict(raw.get("data", {}))
    if "out" not in raw:
        raise ConfigError(f"{source}: missing `out` (the run directory)")
    if "train" not in data:
        raise ConfigError(f"{source}: missing data.train (the training items table)")

    def resolve(value):
        return None if value is None else str((Path(base) / str(value)).expanduser())

    train_path, eval_path = resolve(data.pop("train")), resolve(data.pop("eval", None))
    model = model_config_from_dict(dict(raw.get("model", {})), f"{source}: model")
    for key in ("whisper_path", "hf_path", "tokenizer"):
        value = getattr(model, key)
        if value is not None and value not in ("minilm", "all-MiniLM-L6-v2"):
            setattr(model, key, resolve(value))
    train = _build(TrainConfig, dict(raw.get("train", {})), f"{source}: train").validate(f"{source}: train")
    if train.audio_cache is not None:
        train.audio_cache = resolve(train.audio_cache)
    return RunConfig(out=resolve(raw["out"]), train_data=train_path, eval_data=eval_path,
                     columns=columns_from_dict(data, f"{source}: data"), model=model, train=train)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
