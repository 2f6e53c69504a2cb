"""Classifier inputs built from frozen sentence embeddings (shared by simulations and ``broaden train``)."""
from __future__ import annotations

import numpy as np


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[u, v, |u−v|, u⊙v, cos(u, v)] for row-aligned query and item embeddings."""
    cos = (u * v).sum(1, keepdims=True) / np.maximum(
        np.linalg.norm(u, axis=1, keepdims=True) * np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return np.concatenate([u, v, np.abs(u - v), u * v, cos], axis=1).astype(np.float32)
