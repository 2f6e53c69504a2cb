"""Batched inference shared by evaluation during training and by ``broaden score``."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from broaden.models.data import Featurizer, Prepared
from broaden.models.network import MultimodalClassifier


@dataclass
class Scored:
    """Model outputs for the usable rows of one input slice (``rows`` index into it), plus its failures."""

    table: pa.Table
    rows: np.ndarray
    probs: np.ndarray
    embedding: np.ndarray
    attention: list[np.ndarray] | None = None  # per item: head-averaged VLMAE weights over its positions
    errors: list[tuple[int, str]] = field(default_factory=list)
    passes: np.ndarray | None = None  # (N, rows, C) Monte Carlo dropout probabilities; ``probs`` is their mean
    logits: np.ndarray | None = None  # of the deterministic pass, before the temperature and the softmax


def _attention_lists(weights: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    mean = weights.mean(1).float().cpu().numpy()
    valid = mask.bool().cpu().numpy()
    return [row[m] for row, m in zip(mean, valid)]


def _probs(out, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(out.logits.float() / temperature, dim=-1).cpu().numpy()


def infer(model: MultimodalClassifier, featurizer: Featurizer, tables: Iterable[pa.Table | pa.RecordBatch],
          *, device: str | torch.device = "cpu", labels: bool = False, mc_dropout: int = 0,
          seed: int = 0, temperature: float = 1.0) -> Iterator[Scored]:
    """Featurise and score each slice in eval mode without gradients; bad rows come back as errors.

    ``mc_dropout`` = N ≥ 2 adds N Monte Carlo dropout passes per slice (:mod:`broaden.models.mcdropout`,
    consistent masks of ``seed``): ``probs`` is then their mean, ``passes`` holds them, and the
    embedding and attention still come from the deterministic pass. Probabilities are softmax(logits /
    ``temperature``) (temperature scaling, :mod:`broaden.calibration`), in every pass.
    """
    from broaden.models.mcdropout import mc_passes, mean_probs

    model.eval()
    num_classes = model.config.num_classes
    for table in tables:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        prepared: Prepared = featurizer(table, labels=labels)
        if prepared.batch is None:
            dim = model.backbone.width
            yield Scored(table, prepared.rows, np.zeros((0, num_classes), np.float32),
                         np.zeros((0, dim), np.float32), [] if model.config.fusion == "vlmae" else None,
                         prepared.errors, np.zeros((mc_dropout, 0, num_classes), np.float32) if mc_dropout else None,
                         np.zeros((0, num_classes), np.float32))
            continue
        batch = prepared.batch.to(device)
        passes = None
        with torch.inference_mode():
            out = model(batch)
            probs = _probs(out, temperature)
            logits = out.logits.float().cpu().numpy()
            emb = out.h_cls.float().cpu().numpy()
            att = _attention_lists(out.attention, out.audio_mask) if out.attention is not None else None
            if mc_dropout:
                passes = mc_passes(model, lambda: _probs(model(batch), temperature), mc_dropout, seed)
                probs = mean_probs(passes)
        yield Scored(table, prepared.rows, probs, emb, att, prepared.errors, passes, logits)
