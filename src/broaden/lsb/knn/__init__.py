"""k-nearest-neighbour search over a pool's embeddings with FAISS, addressed by the pool's ids.

- :mod:`.backends` — ``flat``, ``ivf``, ``hnsw``, ``ivfpq`` and their :class:`Capabilities`; metrics.
- :mod:`.exact` — the exact streamed scan (:class:`ExactScan`).
- :mod:`.index` — :class:`KNNIndex` and the :class:`Neighbors` a search returns.
- :mod:`.build` — :func:`build_index`: exact, reused from disk, or trained, filled and calibrated.
- :mod:`.cost`, :mod:`.auto` — the cost model and ``index="auto"``'s choice; :mod:`.calibrate` — search
  breadth against a recall target; :mod:`.store` — saved indexes checked by content.
- :mod:`.ray` — the same index sharded over Ray actors (imported only with the Ray engine).
"""
from __future__ import annotations

from broaden.errors import KNNError
from broaden.lsb.knn.backends import BACKENDS, INDEX_KINDS, METRICS, Backend, Capabilities, get_backend
from broaden.lsb.knn.build import build_index
from broaden.lsb.knn.exact import ExactScan
from broaden.lsb.knn.index import KNNIndex, Neighbors

__all__ = ["BACKENDS", "INDEX_KINDS", "METRICS", "Backend", "Capabilities", "ExactScan", "KNNError", "KNNIndex",
           "Neighbors", "build_index", "get_backend"]
