"""Tiny, offline model assets for tests, demos and smoke runs (no downloads, built in milliseconds).

- :func:`tiny_tokenizer` / :func:`tiny_hf_encoder`: a WordPiece tokenizer with a few dozen tokens and a
  randomly initialised 2-layer BERT saved as a local Hugging Face folder (for ``backbone = "hf-text"``).
- :func:`tiny_whisper_config`: a 2-layer, 32-d Whisper encoder with a 3 s window (150 positions).
  A randomly initialised encoder at Whisper's default ``init_std`` (0.02) is dominated by its positional
  embeddings; a larger ``init_std`` lets the untrained convolutions pass the spectrum through.
- :func:`tone_items`: an items table whose label depends only on the audio (a low or a high tone of
  random length), with uninformative text and frames.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

WORDS = ("a", "clip", "of", "some", "sound", "words", "here", "video", "the", "and", "with", "tone",
         "low", "high", "music", "speech", "news", "sport", "cat", "dog")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def tiny_tokenizer(folder: str | os.PathLike):
    """A BERT WordPiece tokenizer over :data:`WORDS`, saved to ``folder`` (and returned)."""
    import json

    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join([*SPECIAL, *WORDS]) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}), encoding="utf-8")
    # Loading through from_pretrained reads vocab.txt the same way across transformers versions.
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.save_pretrained(str(folder))
    return tok


def tiny_hf_encoder(folder: str | os.PathLike, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random tiny BERT + its tokenizer as a local HF folder, like a real checkpoint on disk."""
    import torch
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    return Path(folder)


def tiny_whisper_config(d_model: int = 32, layers: int = 2, positions: int = 150,
                        init_std: float = 0.3) -> dict:
    """Keyword arguments of a tiny ``WhisperConfig`` (window = positions / 50 seconds)."""
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=2 * d_model, num_mel_bins=80,
                max_source_positions=positions, init_std=init_std)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = 16_000) -> Path:
    import soundfile as sf

    sf.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate, subtype="PCM_16")
    return Path(path)


def tone_items(folder: str | os.PathLike, n: int = 120, *, seed: int = 0, frames: int = 2,
               frame_size: tuple[int, int] = (8, 8), low_hz: float = 500.0, high_hz: float = 2500.0,
               min_s: float = 0.3, max_s: float = 2.5, sample_rate: int = 16_000) -> pa.Table:
    """Write ``n`` WAVs to ``folder`` and return their items table (not written).

    label 1 = a ``low_hz`` tone, 0 = a ``high_hz`` tone, each of random duration with noise; text and
    frames are random and independent of the label, so only the audio can predict it.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, 2, n)
    paths = []
    for i, y in enumerate(labels):
        t = np.arange(int(rng.uniform(min_s, max_s) * sample_rate)) / sample_rate
        wave = 0.3 * np.sin(2 * np.pi * (low_hz if y else high_hz) * t) + 0.05 * rng.standard_normal(t.size)
        write_wav(folder / f"clip{i}.wav", wave, sample_rate)
        paths.append(f"clip{i}.wav")
    texts = [" ".join(rng.choice(WORDS, size=4)) for _ in range(n)]
    size = frame_size[0] * frame_size[1]
    cells = [[rng.random(size).astype(np.float32).tolist() for _ in range(frames)] for _ in range(n)]
    return pa.table({"id": [f"item{i}" for i in range(n)], "label": labels.astype(np.int64), "text": texts,
                     "frames": cells, "audio_path": paths})
