"""Exact top-k of fixed queries over pool blocks fed one at a time: no n×n (or pool-sized) matrix exists."""
from __future__ import annotations

import faiss
import numpy as np

from broaden.lsb.knn.backends import faiss_metric


class ExactScan:
    """Exact top-k of fixed queries over pool blocks fed one at a time (bounded memory)."""

    def __init__(self, queries: np.ndarray, k: int, metric: str, gpu=None):
        self.queries, self.k, self.metric = queries, int(k), faiss_metric(metric)
        self.gpu = gpu
        self.heap = faiss.ResultHeap(len(queries), self.k, keep_max=metric == "cosine")

    def add(self, offset: int, vectors: np.ndarray, keep: np.ndarray | None = None) -> None:
        rows = None
        if keep is not None and not keep.all():
            rows = np.flatnonzero(keep)
            vectors = vectors[rows]
        kb = min(self.k, len(vectors))
        if kb == 0 or len(self.queries) == 0:
            return
        if self.gpu is not None:
            dist, idx = faiss.knn_gpu(self.gpu, self.queries, vectors, kb, metric=self.metric)
        else:
            dist, idx = faiss.knn(self.queries, vectors, kb, metric=self.metric)
        idx = (rows[idx] if rows is not None else idx) + offset
        self.heap.add_result(dist, idx)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.heap.finalize()
        return self.heap.D, self.heap.I
