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


def _attention_lists(weights: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    mean = weights.mean(1).float().cpu().numpy()
    valid = mask.bool().cpu().numpy()
    return [row[m] for row, m in zip(mean, valid)]


def infer(model: MultimodalClassifier, featurizer: Featurizer, tables: Iterable[pa.Table | pa.RecordBatch],
          *, device: str | torch.device = "cpu", labels: bool = False) -> Iterator[Scored]:
    """Featurise and score each slice in eval mode without gradients; bad rows come back as errors."""
    model.eval()
    for table in tables:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        prepared: Prepared = featurizer(table, labels=labels)
        if prepared.batch is None:
            dim = model.backbone.width
            yield Scored(table, prepared.rows, np.zeros((0, model.config.num_classes), np.float32),
                         np.zeros((0, dim), np.float32), [] if model.config.fusion == "vlmae" else None,
                         prepared.errors)
            continue
        with torch.inference_mode():
            out = model(prepared.batch.to(device))
            probs = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
            emb = out.h_cls.float().cpu().numpy()
            att = _attention_lists(out.attention, out.audio_mask) if out.attention is not None else None
        yield Scored(table, prepared.rows, probs, emb, att, prepared.errors)
