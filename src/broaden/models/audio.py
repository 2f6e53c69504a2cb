"""Audio front end and encoder (DESIGN §1, paper §3.2): WAV → 16 kHz mono → log-Mel → Whisper encoder.

:func:`load_audio` reads any soundfile-readable file. Documented conversions: several channels are
averaged to mono; any sample rate is resampled to 16 kHz with a polyphase filter
(``scipy.signal.resample_poly``); clips longer than the encoder window (30 s for Whisper) are cut to it.
A missing, unreadable, empty or non-finite file raises :class:`AudioError` naming the file.

transformers' ``WhisperEncoder`` takes exactly ``2·max_source_positions`` Mel frames (3000 = 30 s) and
returns ``max_source_positions`` states (1500), ignoring any attention mask, so :class:`WhisperAudio`
computes the valid length itself: the feature extractor yields one frame per 160 samples (100 frames/s)
and the encoder's second convolution halves that (50 positions/s), i.e. ``ceil(ceil(n/160)/2)`` valid
positions for ``n`` samples. Optional temporal pooling (``pool_stride``) averages non-overlapping
windows of valid positions only.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from broaden.errors import BroadenError

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # Whisper's STFT hop: 100 Mel frames per second
CONV_STRIDE = 2  # WhisperEncoder.conv2 stride: 50 encoder positions per second


class AudioError(BroadenError, ValueError):
    """An audio file cannot be used; the message names the file and the problem."""


def load_audio(source: str | os.PathLike | bytes, *, sample_rate: int = SAMPLE_RATE,
               name: str | None = None) -> np.ndarray:
    """Read a WAV (or any soundfile format) as float32 mono at ``sample_rate`` Hz.

    ``source`` is a path or the file's bytes (``name`` then labels errors). Channels are averaged;
    other rates are resampled with ``scipy.signal.resample_poly``.
    """
    import soundfile as sf

    if isinstance(source, bytes):
        label, handle = name or "<audio bytes>", io.BytesIO(source)
    else:
        label, path = name or str(source), Path(source)
        if not path.is_file():
            raise AudioError(f"{label}: audio file not found")
        handle = path
    try:
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{label}: not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{label}: the file holds no audio samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioError(f"{label}: audio contains NaN or infinite samples")
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def valid_positions(num_samples: int | np.ndarray, window_samples: int) -> np.ndarray:
    """Encoder positions covered by real audio for clips of ``num_samples`` (capped at the window)."""
    n = np.minimum(np.asarray(num_samples, dtype=np.int64), window_samples)
    frames = -(-n // HOP_LENGTH)
    return -(-frames // CONV_STRIDE)


def strided_mean(states: torch.Tensor, lengths: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average non-overlapping windows of ``stride`` valid positions.

    ``states`` (B, L, d) with ``lengths`` (B,) valid positions each → (B, ceil(max_len/stride), d) and
    the new lengths ``ceil(len/stride)``; padded positions never enter an average.
    """
    # At least one position, so that pooling heads always have a (possibly fully masked) axis to reduce.
    max_len = max(int(lengths.max()) if len(lengths) else 0, 1)
    states = states[:, :max_len]
    mask = (torch.arange(max_len, device=states.device)[None] < lengths[:, None]).to(states.dtype)
    if stride == 1:
        return states * mask[..., None], lengths
    pad = (-max_len) % stride
    states = nn.functional.pad(states * mask[..., None], (0, 0, 0, pad))
    mask = nn.functional.pad(mask, (0, pad))
    b, length, d = states.shape
    sums = states.view(b, length // stride, stride, d).sum(2)
    counts = mask.view(b, length // stride, stride).sum(2, keepdim=True)
    return sums / counts.clamp(min=1), -(-lengths // stride)


class WhisperAudio(nn.Module):
    """Whisper feature extractor + encoder, returning valid-length (optionally pooled) audio sequences.

    Build with :meth:`from_pretrained` (a local Whisper checkpoint folder) or :meth:`from_config`
    (a ``WhisperConfig`` dict, e.g. tiny ones for tests). The window is ``2·max_source_positions`` Mel
    frames (30 s for real checkpoints); ``max_source_positions`` must be a multiple of 50.
    """

    def __init__(self, encoder: nn.Module, feature_extractor, pool_stride: int = 1):
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.pool_stride = int(pool_stride)
        self._digest: str | None = None

    # -- construction
    @staticmethod
    def _feature_extractor(config, path: Path | None = None):
        from transformers import WhisperFeatureExtractor

        if path is not None and (path / "preprocessor_config.json").is_file():
            return WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        seconds, rest = divmod(config.max_source_positions * CONV_STRIDE * HOP_LENGTH, SAMPLE_RATE)
        if rest:
            raise AudioError(
                f"whisper max_source_positions={config.max_source_positions}: must be a multiple of 50 "
                "(a whole number of seconds of audio)"
            )
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=seconds)

    @classmethod
    def from_config(cls, config, pool_stride: int = 1, folder: str | os.PathLike | None = None) -> WhisperAudio:
        """A randomly initialised encoder from a ``WhisperConfig`` (or its dict); ``folder`` may hold a
        saved ``preprocessor_config.json`` for the feature extractor."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cfg = config if isinstance(config, WhisperConfig) else WhisperConfig(**config)
        extractor = cls._feature_extractor(cfg, Path(folder) if folder is not None else None)
        return cls(WhisperEncoder(cfg).eval(), extractor, pool_stride)

    def save_settings(self, folder: str | os.PathLike) -> None:
        """Write the encoder config and feature-extractor settings (not the weights) to ``folder``."""
        self.encoder.config.save_pretrained(str(folder))
        self.feature_extractor.save_pretrained(str(folder))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, pool_stride: int = 1) -> WhisperAudio:
        from transformers import WhisperModel

        p = Path(path)
        if not (p / "config.json").is_file():
            raise AudioError(f"{p}: not a local Whisper checkpoint folder (config.json missing)")
        model = WhisperModel.from_pretrained(str(p), local_files_only=True)
        encoder = model.get_encoder().eval()
        return cls(encoder, cls._feature_extractor(encoder.config, p), pool_stride)

    # -- properties
    @property
    def dim(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def window_samples(self) -> int:
        return int(self.feature_extractor.n_samples)

    def digest(self) -> str:
        """Fingerprint of weights + settings: cached sequences are valid only for the same digest."""
        if self._digest is None:
            h = hashlib.sha256()
            # Private keys such as _name_or_path hold where the checkpoint was loaded from, not what it is.
            settings = {k: v for k, v in self.encoder.config.to_dict().items()
                        if not k.startswith("_") and k != "transformers_version"}
            h.update(json.dumps(settings, sort_keys=True, default=str).encode())
            h.update(json.dumps(self.feature_extractor.to_dict(), sort_keys=True, default=str).encode())
            h.update(f"stride={self.pool_stride}".encode())
            for name, tensor in sorted(self.encoder.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._digest = h.hexdigest()
        return self._digest

    # -- computation
    def features(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-Mel input (B, n_mels, frames) and the valid encoder positions per clip (B,)."""
        clipped = [w[: self.window_samples] for w in waves]
        feats = self.feature_extractor(clipped, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        lengths = valid_positions([len(w) for w in clipped], self.window_samples)
        return feats["input_features"], torch.as_tensor(lengths, dtype=torch.long)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states cut to the longest valid length and pooled: (B, L, d) and lengths (B,)."""
        states = self.encoder(input_features=mel).last_hidden_state
        return strided_mean(states, lengths.to(states.device), self.pool_stride)

    @torch.inference_mode()
    def encode(self, waves: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Per-clip float16 sequences (L_i, d) holding only the valid (pooled) positions."""
        out: list[np.ndarray] = []
        device = next(self.encoder.parameters()).device
        for start in range(0, len(waves), batch_size):
            mel, lengths = self.features(waves[start:start + batch_size])
            states, lengths = self(mel.to(device), lengths)
            for row, n in zip(states, lengths.tolist()):
                out.append(row[:n].to(torch.float16).cpu().numpy())
        return out
