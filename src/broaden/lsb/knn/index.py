"""A kNN structure over one pool, searched by query embeddings and answering in the pool's ids."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow as pa

from broaden.errors import KNNError
from broaden.io.ids import IdSet
from broaden.io.pool import Pool
from broaden.io.table import BATCH_SIZE, id_keys
from broaden.lsb.knn.backends import Backend, gpu_resources, prepare
from broaden.lsb.knn.exact import ExactScan
from broaden.progress import track


@dataclass
class Neighbors:
    """Per-query neighbours best-first: pool positions (−1 = none), similarities, external ids."""

    positions: np.ndarray
    similarity: np.ndarray
    pool_ids: pa.Array

    @property
    def ids(self) -> np.ndarray:
        """(n_queries, k) id keys (int64 or str); missing neighbours are None."""
        flat = self.positions.ravel()
        out = np.full(flat.shape, None, dtype=object)
        ok = flat >= 0
        out[ok] = id_keys(self.pool_ids.take(pa.array(flat[ok])))
        return out.reshape(self.positions.shape)


def to_similarity(dist: np.ndarray, idx: np.ndarray, metric: str) -> np.ndarray:
    sim = dist.astype(np.float32) if metric == "cosine" else -np.sqrt(np.maximum(dist, 0)).astype(np.float32)
    sim[idx < 0] = np.nan
    return sim


@dataclass
class KNNIndex:
    """A kNN structure over one pool. ``index`` is None for ``flat`` (the pool is streamed per search).

    ``info`` records how it came to be: backend, params, timings, calibrated breadth, achieved recall,
    whether it was reused from disk and why ``auto`` chose it.
    """

    backend: Backend
    source: Pool
    metric: str
    dim: int
    params: dict = field(default_factory=dict)
    index: faiss.Index | None = None
    ids: pa.Array | None = None
    breadth: int | None = None
    info: dict = field(default_factory=dict)

    def search(self, queries: np.ndarray, k: int, *, exclude=None, batch_size: int = BATCH_SIZE,
               show_progress: bool = True) -> Neighbors:
        """The ``k`` nearest eligible pool items of each query; ``exclude`` (ids or an IdSet) are skipped."""
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise KNNError(f"queries have shape {queries.shape}; the pool's embeddings have dimension {self.dim}")
        k = min(int(k), self.source.num_rows)  # never size result heaps beyond the pool (memory)
        q = prepare(queries, self.metric)
        excl = exclude if isinstance(exclude, IdSet) or exclude is None else IdSet(np.asarray(exclude))
        t0 = time.perf_counter()
        if self.index is None:
            dist, idx = self._stream_search(q, k, excl, batch_size, show_progress)
        else:
            dist, idx = self._index_search(q, k, excl)
        self.info["search_s"] = round(time.perf_counter() - t0, 3)
        return Neighbors(idx, to_similarity(dist, idx, self.metric), self.ids)

    def _stream_search(self, q, k, excl, batch_size, show_progress):
        scan = ExactScan(q, k, self.metric, gpu=gpu_resources())
        id_parts = []
        with track("exact kNN over the pool", self.source.num_rows, show_progress, transient=True) as advance:
            for offset, ids, x in self.source.blocks(batch_size=batch_size):
                keep = ~excl.contains(id_keys(ids)) if excl is not None and len(excl) else None
                scan.add(offset, prepare(x, self.metric), keep)
                id_parts.append(ids)
                advance(len(ids))
        self.ids = pa.concat_arrays(id_parts) if id_parts else pa.array([])
        return scan.result()

    def _index_search(self, q, k, excl):
        keep_refs = []
        selector = None
        if excl is not None and len(excl):
            banned = excl.contains(id_keys(self.ids))
            if banned.any():
                bits = np.packbits(~banned, bitorder="little")
                keep_refs.append(bits)
                selector = faiss.IDSelectorBitmap(len(banned), faiss.swig_ptr(bits))
        params = self.backend.search_parameters(self.breadth, selector)
        k_eff = min(int(k), self.index.ntotal) if self.index.ntotal else 0
        if k_eff == 0:
            return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
        dist, idx = self.index.search(q, k_eff, params=params)
        del keep_refs  # the bitmap must outlive the search call
        if k_eff < k:
            dist = np.pad(dist, ((0, 0), (0, k - k_eff)))
            idx = np.pad(idx, ((0, 0), (0, k - k_eff)), constant_values=-1)
        return dist, idx
