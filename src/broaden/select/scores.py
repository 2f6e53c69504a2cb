"""Uncertainty and disagreement scores over an (n, C) probability matrix (DESIGN.md §2, Eqs. 8–10).

Every function is vectorised numpy, computes in float64 and returns one score per row. Zero
probabilities contribute 0 to entropies and divergences (0 · log 0 = 0).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def entr(p: np.ndarray) -> np.ndarray:
    """Elementwise −p log p with 0 at p = 0 (one temporary: this runs on every pool batch)."""
    out = np.zeros_like(p)
    np.log(p, out=out, where=p > 0)
    out *= p
    np.negative(out, out=out)
    return out


def rel_entr(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Elementwise p log(p / q) with 0 at p = 0 (q > 0 wherever p > 0 for a committee's consensus)."""
    safe = p > 0
    return np.where(safe, p * np.log(np.where(safe, p, 1.0) / np.where(safe, q, 1.0)), 0.0)


def _matrix(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected an (n, C) probability matrix with C >= 2, got shape {p.shape}")
    # Validation tolerates tiny negative rounding error; clip so logs stay finite.
    return np.clip(p, 0.0, None)


def least_confident(probs) -> np.ndarray:
    """Eq. 8: 1 − max_c p_c (higher = more uncertain)."""
    return 1.0 - _matrix(probs).max(axis=1)


def margin(probs) -> np.ndarray:
    """Eq. 9: p_(1) − p_(2), the gap between the two largest probabilities (lower = more uncertain)."""
    top2 = np.partition(_matrix(probs), -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy(probs) -> np.ndarray:
    """Eq. 10: −Σ_c p_c log p_c in nats (higher = more uncertain)."""
    return entr(_matrix(probs)).sum(axis=1)


def _committee(members: Sequence) -> np.ndarray:
    stacked = np.stack([_matrix(m) for m in members])
    if stacked.shape[0] < 2:
        raise ValueError("a committee needs at least 2 members")
    return stacked


def vote_entropy(members: Sequence) -> np.ndarray:
    """Query by committee: entropy of the members' hard votes, −Σ_c (V_c/M) log(V_c/M) (higher = more disputed)."""
    stacked = _committee(members)
    m, n, c = stacked.shape
    votes = stacked.argmax(axis=2)  # (M, n)
    counts = np.zeros((n, c))
    np.add.at(counts, (np.broadcast_to(np.arange(n), (m, n)), votes), 1.0)
    return entr(counts / m).sum(axis=1)


def kl_to_consensus(members: Sequence) -> np.ndarray:
    """Query by committee: mean over members of KL(p_m ‖ p̄), p̄ the members' mean (higher = more disputed)."""
    stacked = _committee(members)
    consensus = stacked.mean(axis=0)
    return rel_entr(stacked, consensus[None]).sum(axis=2).mean(axis=0)


def bald(members: Sequence) -> np.ndarray:
    """BALD (Houlsby et al. 2011; Gal et al. 2017): H[p̄] − (1/M) Σ_m H[p_m], the mutual information between
    the label and the model; p_m are samples of the posterior (MC-dropout passes), p̄ their mean. The same
    number as :func:`kl_to_consensus` (I = (1/M) Σ_m KL(p_m ‖ p̄)), written as the papers do (higher = more
    epistemic uncertainty)."""
    stacked = _committee(members)
    info = entropy(stacked.mean(axis=0)) - entr(stacked).sum(axis=2).mean(axis=0)
    # Agreeing members give 0 up to rounding; clipping keeps such ties at exactly 0, broken by id, not by noise.
    return np.maximum(info, 0.0)


def normalized_entropy(probs) -> np.ndarray:
    """Entropy divided by log C, in 0 … 1 (used for uncertainty bands that do not depend on C)."""
    p = _matrix(probs)
    return entropy(p) / np.log(p.shape[1])


UNCERTAINTY = {"least_confident": least_confident, "margin": margin, "entropy": entropy}
# Sign that turns each score into a priority where higher = more uncertain (margin ranks ascending).
UNCERTAINTY_SIGN = {"least_confident": 1.0, "margin": -1.0, "entropy": 1.0}
