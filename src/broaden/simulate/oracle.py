"""The simulated annotator: reveals held-back labels, optionally with errors (``--label-noise``).

Noise is drawn once per repeat for every item, so every group that selects an item receives the same
(possibly wrong) label — the comparison between groups stays paired. The test split is never corrupted:
it is the fixed gold standard the models are evaluated on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from broaden.errors import BroadenError


class OracleError(BroadenError, ValueError):
    """Bad noise settings (rate outside [0, 1), malformed confusion matrix)."""


def load_confusion(path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """A C×C row-stochastic matrix from JSON (``[[...], ...]`` or ``{"confusion": [[...]]}``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OracleError(f"{p}: cannot read a JSON confusion matrix ({exc})") from exc
    if isinstance(data, dict):
        data = data.get("confusion")
    return check_confusion(np.asarray(data, dtype=np.float64), num_classes, str(p))


def check_confusion(matrix: np.ndarray, num_classes: int, source: str = "confusion") -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (num_classes, num_classes):
        raise OracleError(f"{source}: expected a {num_classes}x{num_classes} matrix (rows = true class), "
                          f"got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise OracleError(f"{source}: entries must be finite and >= 0")
    sums = m.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        bad = int(np.argmax(np.abs(sums - 1)))
        raise OracleError(f"{source}: row {bad} sums to {sums[bad]:.6g}; each row is P(given label | true "
                          "class) and must sum to 1")
    return m


def noise_confusion(rate: float, num_classes: int) -> np.ndarray:
    """Symmetric noise: keep the label with probability 1 − rate, else any other class uniformly."""
    if not 0.0 <= rate < 1.0:
        raise OracleError(f"label_noise must be in [0, 1), got {rate}")
    off = rate / (num_classes - 1)
    return np.full((num_classes, num_classes), off) + np.eye(num_classes) * (1.0 - rate - off)


def oracle_labels(labels: np.ndarray, confusion: np.ndarray | None, seed: int) -> np.ndarray:
    """The labels an annotator would return: row ``y`` of ``confusion`` is P(answer | true class y)."""
    labels = np.asarray(labels, dtype=np.int64)
    if confusion is None:
        return labels.copy()
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(confusion, axis=1)
    u = rng.random(len(labels))
    answer = (u[:, None] > cdf[labels]).sum(axis=1)
    return np.minimum(answer, confusion.shape[0] - 1).astype(np.int64)
