"""kNN backends (DESIGN.md §3 step 2, §7), each declaring its :class:`Capabilities`, and the metric helpers.

- ``flat``: exact. Nothing is built; every search streams the pool in blocks (:mod:`.exact`).
- ``ivf``: IVF-Flat, or IVF-SQ8 when float32 vectors would not fit the memory budget.
- ``hnsw``: HNSW graph over float32 vectors.
- ``ivfpq``: IVF with product quantisation (smallest footprint, lowest recall on clustered data).

Cosine similarity is the inner product of unit vectors; with ``metric="l2"`` the reported similarity is
−‖q − x‖₂ so that larger is always closer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import faiss
import numpy as np

from broaden.errors import KNNError
from broaden.io.table import BATCH_SIZE
from broaden.lsb.knn.cost import choose_nlist

METRICS = ("cosine", "l2")


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, and unit-normalised for cosine (cosine = inner product of unit vectors)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        faiss.normalize_L2(x)  # zero vectors stay zero
    return x


def faiss_metric(metric: str) -> int:
    if metric not in METRICS:
        raise KNNError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers: exact results, a file to save, a training pass, a breadth to calibrate."""

    exact: bool
    saveable: bool
    trained: bool
    breadth: str | None = None
    metrics: tuple[str, ...] = ("cosine", "l2")


@dataclass(frozen=True)
class Backend:
    """One kind of kNN structure; ``params`` fix its shape (nlist, codec, M …) for a given pool."""

    name: str
    capabilities: Capabilities
    param_names = ()  # the keys of ``params`` (a class attribute, not a field)

    def default_params(self, n: int, dim: int, *, memory_gb: float, n_queries: int) -> dict:
        return {}

    def factory(self, params: dict) -> str:
        raise NotImplementedError

    def memory_bytes(self, n: int, dim: int, params: dict) -> int:
        return 0

    def train_size(self, n: int, params: dict) -> int:
        return 0

    def breadth_grid(self, params: dict) -> list[int]:
        return []

    def configure(self, index: faiss.Index, params: dict) -> None:
        """Settings that index_factory strings cannot express."""

    def search_parameters(self, breadth: int | None, selector) -> faiss.SearchParameters | None:
        return faiss.SearchParameters(sel=selector)


class ExactBackend(Backend):
    def memory_bytes(self, n, dim, params):
        return BATCH_SIZE * dim * 4




class IVFBackend(Backend):
    """Inverted lists; ``codec`` is ``Flat``, ``SQ8`` or ``PQ{m}x8`` (chosen from the memory budget)."""

    param_names = ("nlist", "codec")

    def default_params(self, n, dim, *, memory_gb, n_queries):
        nlist = choose_nlist(n, dim, n_queries)
        if self.name == "ivfpq":
            # 4 dimensions per sub-quantiser: still 4× smaller than SQ8, far better recall than dim/8.
            m = max(c for c in range(1, dim + 1) if dim % c == 0 and c <= max(1, dim // 4))
            return {"nlist": nlist, "codec": f"PQ{m}x8"}
        flat = {"nlist": nlist, "codec": "Flat"}
        codec = "Flat" if self.memory_bytes(n, dim, flat) <= memory_gb * 2**30 else "SQ8"
        return {"nlist": nlist, "codec": codec}

    def factory(self, params):
        return f"IVF{params['nlist']},{params['codec']}"

    def memory_bytes(self, n, dim, params):
        codec = params["codec"]
        code = 4 * dim if codec == "Flat" else dim if codec == "SQ8" else int(codec[2:].split("x")[0])
        return n * (code + 8) + params["nlist"] * dim * 4

    def train_size(self, n, params):
        # ~40 points per centroid (FAISS warns below 39); PQ codebooks want 256 × 39 points.
        return min(n, max(40 * params["nlist"], 10_000 if params["codec"].startswith("PQ") else 0))

    def breadth_grid(self, params):
        grid = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
        return [b for b in grid if b < params["nlist"]] + [params["nlist"]]

    def configure(self, index, params):
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # k-means converges far before FAISS's default 25 on a 40-per-centroid sample
        ivf.cp.max_points_per_centroid = 1 << 30
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # only serves Hamming pre-filtering, which we never use

    def search_parameters(self, breadth, selector):
        return faiss.SearchParametersIVF(nprobe=int(breadth), sel=selector)


class HNSWBackend(Backend):
    param_names = ("M", "efConstruction")

    def default_params(self, n, dim, *, memory_gb, n_queries):
        return {"M": 32, "efConstruction": 80}

    def factory(self, params):
        return f"HNSW{params['M']},Flat"

    def memory_bytes(self, n, dim, params):
        return n * (4 * dim + 8 * params["M"] + 8)

    def breadth_grid(self, params):
        return [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096]

    def configure(self, index, params):
        index.hnsw.efConstruction = int(params["efConstruction"])

    def search_parameters(self, breadth, selector):
        return faiss.SearchParametersHNSW(efSearch=int(breadth), sel=selector)


BACKENDS: dict[str, Backend] = {
    "flat": ExactBackend("flat", Capabilities(exact=True, saveable=False, trained=False)),
    "ivf": IVFBackend("ivf", Capabilities(exact=False, saveable=True, trained=True, breadth="nprobe")),
    "hnsw": HNSWBackend("hnsw", Capabilities(exact=False, saveable=True, trained=False, breadth="efSearch")),
    "ivfpq": IVFBackend("ivfpq", Capabilities(exact=False, saveable=True, trained=True, breadth="nprobe")),
}
INDEX_KINDS = ("auto", *BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise KNNError(f"unknown index {name!r}; choose one of {', '.join(INDEX_KINDS)}") from None


# --------------------------------------------------------------------------------------------- GPU
def gpu_resources():
    """FAISS GPU resources when a GPU build and a device are present, else None."""
    if os.environ.get("BROADEN_NO_GPU") or not hasattr(faiss, "StandardGpuResources"):
        return None
    try:
        return faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None
    except Exception:  # a GPU build without a usable device
        return None


def check_params(backend: Backend, params: dict, n: int) -> None:
    """Index parameters (``--index-param``) the backend knows, with usable values for an ``n``-row pool."""
    unknown = sorted(set(params) - set(backend.param_names))
    if unknown:
        raise KNNError(f"unknown {backend.name} index parameter(s) {', '.join(unknown)}; "
                       f"expected {', '.join(backend.param_names)}")
    for key in ("nlist", "M", "efConstruction"):
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise KNNError(f"{backend.name} index parameter {key} must be a positive integer, got {value!r}")
    if params.get("nlist", 0) > n:
        raise KNNError(f"{backend.name} index parameter nlist={params['nlist']} exceeds the pool's {n} rows "
                       "(k-means needs at least one row per list)")
