"""The cost model behind ``index="auto"`` (DESIGN.md §7): estimated seconds of exact and IVF search.

The estimate weighs what a run will actually pay: exact search costs queries × pool rows; an IVF index
costs a k-means training, one assignment pass over the pool and then cheap searches, unless a valid
saved index is already on disk, in which case only the searches remain. The per-operation constants
were measured on the reference machine (2 cores, AVX-512) and scale with FAISS's thread count; they
only need to be right within a small factor to order the options.
"""
from __future__ import annotations

import faiss
import numpy as np

# Seconds per (query or vector) × vector × dimension on 2 threads, from §7's measurements:
BLAS_S = 1.0 / (157 * 1e6 * 384)                     # exact IndexFlatIP: 157 q/s on 1M × 384
SCAN_S = {"Flat": 1.0 / (5200 * 3906 * 384),         # IVF-Flat 4096 lists, nprobe 16: 5.2k q/s
          "SQ8": 1.0 / (10_000 * 3906 * 384)}        # IVF-SQ8, same lists: 10k q/s
READ_S = 2e-8                                         # Parquet list<float> read + decode, per value (~200 MB/s)
KMEANS_ITERS = 10
NPROBE_GUESS = 16
CALIBRATION_QUERIES = 256
SMALL_POOL = 20_000


def _thread_scale() -> float:
    return 2.0 / max(1, faiss.omp_get_max_threads())


def scan_cost(codec: str) -> float:
    return SCAN_S.get(codec, SCAN_S["SQ8"] / 4)  # PQ codes are a fraction of a byte per dimension


def ivf_cost(n: int, dim: int, n_queries: int, nlist: int, codec: str, *, built: bool = False) -> float:
    """Estimated seconds for train + add + calibrate + search (search only when ``built``)."""
    s = _thread_scale()
    search = n_queries * dim * (nlist * BLAS_S + NPROBE_GUESS * (n / nlist) * scan_cost(codec)) * s
    if built:
        return search
    train = KMEANS_ITERS * min(n, 40 * nlist) * nlist * dim * BLAS_S * s
    add = n * nlist * dim * BLAS_S * s
    calibrate = min(n_queries, CALIBRATION_QUERIES) * n * dim * BLAS_S * s
    return train + add + calibrate + search + n * dim * READ_S


def exact_cost(n: int, dim: int, n_queries: int) -> float:
    return n_queries * n * dim * BLAS_S * _thread_scale() + n * dim * READ_S


def choose_nlist(n: int, dim: int, n_queries: int, codec: str = "Flat") -> int:
    """Power-of-two list count minimising build + search time, within [√n/4, 8√n] and ≥ 40 rows per list."""
    hi = max(1, min(1 << int(np.log2(8 * np.sqrt(n))), n // 40, 65_536))
    lo = max(1, min(hi, 1 << max(0, int(np.log2(max(np.sqrt(n) / 4, 1))))))
    options = [1 << j for j in range(int(np.log2(lo)), int(np.log2(hi)) + 1)]
    return min(options, key=lambda nl: ivf_cost(n, dim, n_queries, nl, codec))
