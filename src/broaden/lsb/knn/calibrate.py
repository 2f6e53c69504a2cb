"""Calibrate an approximate index's search breadth (nprobe / efSearch) to a recall target.

On clustered embeddings the textbook defaults miss badly (DESIGN.md §7: HNSW efSearch 128 → recall@10
0.81, IVF-PQ → 0.23), so breadth is measured, not assumed: a sample of the real queries is searched
exactly, then with growing breadth, and the smallest breadth whose recall clears the target with a
one-sided 95 % margin is kept. When even the widest breadth falls short, it is kept and the shortfall is
reported (``reached: False``).
"""
from __future__ import annotations

import math

import numpy as np


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (positions; −1 entries are padding)."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += np.intersect1d(f[f >= 0], t).size
        total += t.size
    return hits / total if total else 1.0


def calibrate(index, backend, params: dict, queries: np.ndarray, truth: np.ndarray, k: int,
              target: float) -> dict:
    """Smallest breadth on ``backend.breadth_grid(params)`` meeting ``target``; returns the trace too."""
    slots = max(int((truth >= 0).sum()), 1)
    trace = []
    chosen = None
    for breadth in backend.breadth_grid(params):
        _, found = index.search(queries, k, params=backend.search_parameters(breadth, None))
        r = recall_at_k(found, truth)
        trace.append([breadth, round(r, 5)])
        margin = 1.645 * math.sqrt(max(r * (1 - r), 0.0) / slots)
        if r - margin >= target or r >= 1.0:
            chosen = breadth, r
            break
    reached = chosen is not None
    if chosen is None:
        chosen = max(((b, r) for b, r in trace), key=lambda br: (br[1], -br[0]))
    return {"breadth": int(chosen[0]), "parameter": backend.capabilities.breadth, "recall": round(chosen[1], 5),
            "target": target, "reached": reached, "queries": len(queries), "k": k, "trace": trace}
