"""A small "pre-trained" Whisper-architecture audio encoder (DESIGN §1, paper §3.2, issue 10).

The paper fuses a pre-trained Whisper encoder, frozen. No Whisper weights can be downloaded here, so
:func:`pretrain_audio_encoder` trains a tiny transformers Whisper encoder on recordings that the
classifier never sees (e.g. av-digits' ``pretrain.parquet`` speakers) with a *different* objective:
10-way spoken-digit classification (the downstream task is digit parity), on the mean of the encoder
states over the valid positions (Eq. 6's ``avgpool``), through a linear head that is thrown away.

Two speakers give little speaker or microphone variety, so each training clip is perturbed: speed
(resampling by a random factor shifts pitch and tempo together), spectral tilt (a random first-order
filter ``y[n] = x[n] − a·x[n−1]``, a crude microphone response), white noise at a random SNR, and
SpecAugment-style frequency and time masks on the log-Mel.

The result is a standard HF checkpoint folder that :meth:`WhisperAudio.from_pretrained` loads
(``config.json`` + ``model.safetensors`` of a ``WhisperModel``, ``preprocessor_config.json`` for a
``window_seconds`` feature window) plus ``pretraining.json``: objective, settings, the speakers and
recording ids trained on, and the per-epoch history. ``WhisperModel`` needs a decoder to load; it gets a
one-layer decoder over an 8-token vocabulary that is never trained or used.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from broaden._lazy import renamed
from broaden._typing import TableLike
from broaden.errors import DatasetError
from broaden.io import Pool, as_scored, atomic_dir, labels_array, load_scored, source_name
from broaden.models.audio import CONV_STRIDE, HOP_LENGTH, SAMPLE_RATE, WhisperAudio, load_audio
from broaden.models.fusion import masked_mean
from broaden.progress import track
from broaden.models.text import torch_threads

OBJECTIVE = "spoken-digit classification (10 classes), mean-pooled encoder states, linear head"
REQUIRED = ("id", "label", "split", "audio_path", "speaker")
_VOCAB = 8  # the unused decoder's vocabulary: just enough for the special-token ids


@dataclass
class PretrainConfig:
    """Encoder size and optimisation (defaults: 0.24 M encoder parameters; 25 epochs over FSDD's 900
    pre-training recordings took 204 s on one thread here)."""

    d_model: int = 96
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 256
    window_seconds: int = 3  # feature window; FSDD's longest recording is 2.3 s
    dropout: float = 0.1
    epochs: int = 25
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    speed_range: tuple[float, float] = (0.8, 1.25)  # (1, 1) disables speed perturbation
    tilt_range: tuple[float, float] = (-0.5, 0.9)  # (0, 0) disables the spectral tilt
    snr_db_range: tuple[float, float] | None = (10.0, 40.0)  # None: no added noise
    freq_masks: int = 2
    freq_mask_width: int = 8
    time_masks: int = 2
    time_mask_width: int = 10  # Mel frames (10 ms each)
    seed: int = 0
    num_threads: int | None = None

    def whisper_config(self) -> dict:
        # 50 encoder positions per second of audio (WhisperAudio's window must be whole seconds).
        positions = self.window_seconds * SAMPLE_RATE // (HOP_LENGTH * CONV_STRIDE)
        return dict(
            vocab_size=_VOCAB, num_mel_bins=80, d_model=self.d_model, encoder_layers=self.layers,
            encoder_attention_heads=self.heads, encoder_ffn_dim=self.ffn_dim, decoder_layers=1,
            decoder_attention_heads=self.heads, decoder_ffn_dim=self.ffn_dim, max_source_positions=positions,
            max_target_positions=8, dropout=self.dropout, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1, begin_suppress_tokens=None, suppress_tokens=None,
        )


@dataclass
class PretrainResult:
    path: Path
    train_accuracy: float
    val_accuracy: float | None
    speakers: list[str]
    n_train: int
    n_val: int
    history: list[dict] = field(default_factory=list)


class _DigitProbe(nn.Module):
    """Encoder → mean over valid positions → linear layer over the 10 digits (discarded afterwards)."""

    def __init__(self, audio: WhisperAudio, classes: int):
        super().__init__()
        self.audio = audio
        self.head = nn.Linear(audio.dim, classes)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        states, lengths = self.audio(mel, lengths)
        mask = torch.arange(states.shape[1])[None] < lengths[:, None]
        return self.head(masked_mean(states, mask))


def _read_recordings(recordings: TableLike) -> tuple[pa.Table, Path]:
    """The recordings table through the one loader (:mod:`broaden.io`: a path is read, an in-memory table
    converted, ids and labels checked alike), and the folder relative audio paths start from."""
    pool = Pool.of(as_scored(recordings, what="recordings"))
    name = source_name(pool.data, "recordings")
    table = load_scored(pool.data, require=(), what=name)
    base = Path(".") if pool.is_table else pool.data if pool.data.is_dir() else pool.data.parent
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DatasetError(f"{name}: "
                           f"lacks column(s) {', '.join(missing)}; expected {', '.join(REQUIRED)} "
                           "(av-digits' pretrain.parquet)")
    labels = labels_array(table.column("label"))
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise DatasetError(f"recordings: row {int(bad[0])} has label {int(labels[bad[0]])}; expected a digit 0-9")
    return table, base


def _perturb(wave: np.ndarray, cfg: PretrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Speed, spectral tilt and noise (see the module docstring)."""
    from scipy.signal import lfilter, resample_poly

    up = int(round(1000 / rng.uniform(*cfg.speed_range)))  # faster = fewer samples at the same rate
    g = np.gcd(up, 1000)
    wave = resample_poly(wave, up // g, 1000 // g)
    wave = lfilter([1.0, -rng.uniform(*cfg.tilt_range)], [1.0], wave)
    if cfg.snr_db_range is not None:
        power = float(np.mean(wave ** 2)) + 1e-12
        snr = rng.uniform(*cfg.snr_db_range)
        wave = wave + rng.standard_normal(wave.size) * np.sqrt(power / 10 ** (snr / 10))
    return wave.astype(np.float32)


def _mask(mel: torch.Tensor, lengths: torch.Tensor, cfg: PretrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment: set random Mel-bin bands and frame spans (within the valid audio) to the floor."""
    mel = mel.clone()
    floor = mel.amin(dim=(1, 2))
    for i in range(mel.shape[0]):
        for axis, count, width, size in ((1, cfg.freq_masks, cfg.freq_mask_width, mel.shape[1]),
                                         (2, cfg.time_masks, cfg.time_mask_width, 2 * int(lengths[i]))):
            for _ in range(count):
                w = int(rng.integers(0, min(width, size // 4) + 1))
                start = int(rng.integers(0, size - w + 1))
                mel[i].narrow(axis - 1, start, w).fill_(floor[i])
    return mel


def _accuracy(probe: _DigitProbe, waves: list[np.ndarray], labels: np.ndarray, batch: int) -> float:
    probe.eval()
    right = 0
    with torch.inference_mode():
        for s in range(0, len(waves), batch):
            mel, lengths = probe.audio.features(waves[s:s + batch])
            right += int((probe(mel, lengths).argmax(1).numpy() == labels[s:s + batch]).sum())
    return right / max(len(waves), 1)


@renamed(progress="show_progress")
def pretrain_audio_encoder(recordings: TableLike, out: str | os.PathLike, *,
                           config: PretrainConfig | None = None, show_progress: bool = True) -> PretrainResult:
    """Train a small Whisper encoder on ``recordings`` (rows ``split == "train"``; ``"test"`` rows are the
    validation set) and save it to ``out`` as a local HF checkpoint. Returns accuracies and history.

    ``recordings`` is a Parquet path or an in-memory table (anything :func:`broaden.io.as_scored` takes) with
    columns ``id, label (digit 0-9), split, audio_path, speaker``; relative audio paths are taken from the
    file's folder (from the working directory for a table).
    """
    cfg = config or PretrainConfig()
    table, base = _read_recordings(recordings)
    split = np.asarray(table.column("split").to_pylist())
    labels = labels_array(table.column("label"))
    paths = [p if Path(p).is_absolute() else str(base / p) for p in table.column("audio_path").to_pylist()]
    train_rows, val_rows = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
    if train_rows.size == 0:
        raise DatasetError("recordings: no rows with split == 'train' to pre-train on")
    waves = [load_audio(p) for p in paths]
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    with torch_threads(cfg.num_threads):
        audio = WhisperAudio.from_config(cfg.whisper_config())
        probe = _DigitProbe(audio, 10)
        params = [p for p in probe.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * -(-train_rows.size // cfg.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps, pct_start=0.15)
        history = []
        with track("pre-training audio encoder", steps, show_progress) as advance:
            for epoch in range(cfg.epochs):
                probe.train()
                order = rng.permutation(train_rows)
                loss_sum = 0.0
                for s in range(0, order.size, cfg.batch_size):
                    rows = order[s:s + cfg.batch_size]
                    mel, lengths = audio.features([_perturb(waves[r], cfg, rng) for r in rows])
                    loss = nn.functional.cross_entropy(probe(_mask(mel, lengths, cfg, rng), lengths),
                                                       torch.as_tensor(labels[rows]))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    loss_sum += float(loss.detach()) * rows.size
                    advance(1)
                val = (_accuracy(probe, [waves[r] for r in val_rows], labels[val_rows], 64)
                       if val_rows.size else None)
                history.append({"epoch": epoch + 1, "train_loss": loss_sum / train_rows.size, "val_accuracy": val})
        train_acc = _accuracy(probe, [waves[r] for r in train_rows], labels[train_rows], 64)
    audio.requires_grad_(False)
    speakers = sorted(set(table.column("speaker").to_pylist()))
    result = PretrainResult(Path(out), train_acc, history[-1]["val_accuracy"], speakers,
                            int(train_rows.size), int(val_rows.size), history)
    _save(audio, cfg, table, result)
    return result


def _save(audio: WhisperAudio, cfg: PretrainConfig, table: pa.Table, result: PretrainResult) -> None:
    from transformers import WhisperConfig, WhisperModel

    model = WhisperModel(WhisperConfig(**cfg.whisper_config()))
    model.encoder.load_state_dict(audio.encoder.state_dict())
    meta = {"objective": OBJECTIVE, "config": asdict(cfg), "speakers": result.speakers,
            "recordings": table.column("id").to_pylist(), "train_accuracy": result.train_accuracy,
            "val_accuracy": result.val_accuracy, "history": result.history}
    with atomic_dir(result.path) as folder:
        model.save_pretrained(str(folder))
        audio.feature_extractor.save_pretrained(str(folder))
        (folder / "pretraining.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def pretraining_info(path: str | os.PathLike) -> dict:
    """The ``pretraining.json`` record of a checkpoint made by :func:`pretrain_audio_encoder`."""
    p = Path(path) / "pretraining.json"
    if not p.is_file():
        raise DatasetError(f"{p}: not found; {path} was not made by pretrain_audio_encoder")
    return json.loads(p.read_text(encoding="utf-8"))
