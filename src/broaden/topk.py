"""The one streaming top-k used by every selection strategy (and by LSB): deterministic, bounded memory.

Order is by score descending, ties broken by id ascending (integer ids numerically, string ids by code
point), so a selection does not depend on how the pool is split into files or batches. Only the current
best ``k`` (score, id) pairs are kept while batches stream in.
"""
from __future__ import annotations

import numpy as np


def top_k_indices(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best rows by (score desc, id asc), unordered; O(n) apart from the tie block."""
    n = len(scores)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(scores, n - k)[n - k]  # the k-th largest score
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)
    need = k - above.size
    if tied.size > need:
        tied = tied[np.argsort(ids[tied], kind="stable")[:need]]
    return np.concatenate([above, tied])


def rank_order(scores: np.ndarray, ids: np.ndarray, *then: np.ndarray) -> np.ndarray:
    """Permutation putting rows in (score desc, each of ``then`` desc, id asc) order."""
    return np.lexsort((ids, *(-np.asarray(t) for t in reversed(then)), -np.asarray(scores)))


class TopK:
    """Running top-``k`` of (score, id) pairs over streamed batches; higher score is better.

    ``push`` may be called with any number of rows; ``result`` returns ids and scores best-first.
    An optional ``extra`` array per row (e.g. a second score, a seed id) rides along with its row.
    Scores must not be NaN (a NaN would silently fall out of every comparison).
    """

    def __init__(self, k: int):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = int(k)
        self._scores = np.empty(0, dtype=np.float64)
        self._ids: np.ndarray | None = None
        self._extra: np.ndarray | None = None
        self.seen = 0

    @property
    def threshold(self) -> float:
        """The worst score still kept once full (−inf before): rows below it cannot enter."""
        return float(self._scores.min()) if len(self._scores) >= self.k and self.k else -np.inf

    def push(self, scores: np.ndarray, ids: np.ndarray, extra: np.ndarray | None = None) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        ids = np.asarray(ids)
        if scores.shape != ids.shape or scores.ndim != 1:
            raise ValueError(f"scores and ids must be 1-D of equal length, got {scores.shape} and {ids.shape}")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN")
        self.seen += len(scores)
        if self.k == 0 or len(scores) == 0:
            return
        if len(self._scores) >= self.k:
            # Ties with the current worst may still win on id, so keep ">=".
            keep = scores >= self.threshold
            if not keep.any():
                return
            scores, ids = scores[keep], ids[keep]
            extra = None if extra is None else np.asarray(extra)[keep]
        if self._ids is not None:
            scores = np.concatenate([self._scores, scores])
            ids = np.concatenate([self._ids, ids])
            if extra is not None:
                extra = np.concatenate([self._extra, extra])
        if len(scores) > self.k:
            idx = top_k_indices(scores, ids, self.k)
            scores, ids = scores[idx], ids[idx]
            extra = None if extra is None else np.asarray(extra)[idx]
        self._scores, self._ids, self._extra = scores, ids, extra

    def __len__(self) -> int:
        return len(self._scores)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) best-first."""
        if self._ids is None:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        order = rank_order(self._scores, self._ids)
        return self._ids[order], self._scores[order]

    def merge(self, other: TopK) -> TopK:
        """Add ``other``'s rows: the top-k of the union, as if every row had been pushed here."""
        ids, scores = other.result()
        extra = other.extra()
        seen = self.seen + other.seen
        self.push(scores, ids, extra if len(ids) and extra.size == len(ids) else None)
        self.seen = seen
        return self

    def extra(self) -> np.ndarray:
        """The ``extra`` values in the same best-first order as :meth:`result` (empty if none were given)."""
        if self._extra is None:
            return np.empty(0)
        return self._extra[rank_order(self._scores, self._ids)]


def merge_top(a: TopK, b: TopK) -> TopK:
    """``a.merge(b)`` as a function (the merge step of a fold over TopK states)."""
    return a.merge(b)
