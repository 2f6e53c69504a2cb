"""k-nearest-neighbour search over a pool's embeddings with FAISS, addressed by external ids.

Backends (DESIGN.md §3 step 2, §7), each declaring its :class:`Capabilities`:

- ``flat``: exact. Nothing is built; every search streams the pool in blocks and merges per-block
  ``faiss.knn`` results in a ``faiss.ResultHeap``, so no n×n (or pool-sized) matrix ever exists.
- ``ivf``: IVF-Flat, or IVF-SQ8 when float32 vectors would not fit the memory budget.
- ``hnsw``: HNSW graph over float32 vectors.
- ``ivfpq``: IVF with product quantisation (smallest footprint, lowest recall on clustered data).

Approximate indexes are trained on a sample of the pool, filled batch by batch while the pool streams
past, and their search breadth (nprobe / efSearch) is calibrated against exact search on a sample of the
real queries (see :mod:`broaden.lsb.calibrate`). Cosine similarity is the inner product of unit vectors;
with ``metric="l2"`` the reported similarity is −‖q − x‖₂ so that larger is always closer.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import pyarrow as pa

from broaden.errors import ScoredTableError
from broaden.io import DEFAULT_COLUMNS, Columns, id_keys
from broaden.lsb.calibrate import calibrate
from broaden.lsb.source import BATCH_SIZE, KNNError, PoolSource, faiss_metric, prepare
from broaden.progress import track
from broaden.select.pool import IdSet


# ----------------------------------------------------------------------------------------- backends
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


def _pow2(x: float) -> int:
    return 1 << max(0, int(round(np.log2(max(x, 1.0)))))


class IVFBackend(Backend):
    """Inverted lists; ``codec`` is ``Flat``, ``SQ8`` or ``PQ{m}x8`` (chosen from the memory budget)."""

    param_names = ("nlist", "codec")

    def default_params(self, n, dim, *, memory_gb, n_queries):
        from broaden.lsb.auto import choose_nlist

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


# ------------------------------------------------------------------------------------ exact search
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


# -------------------------------------------------------------------------------------- the index
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
    source: PoolSource
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


def search(index: KNNIndex, queries: np.ndarray, k: int, *, exclude=None) -> Neighbors:
    """Module-level form of :meth:`KNNIndex.search`."""
    return index.search(queries, k, exclude=exclude)


# ------------------------------------------------------------------------------------------- build
def build_index(
    pool,
    *,
    index: str = "auto",
    metric: str = "cosine",
    columns: Columns = DEFAULT_COLUMNS,
    queries: np.ndarray | None = None,
    k: int = 10,
    target_recall: float = 0.95,
    memory_gb: float = 8.0,
    index_dir: str | os.PathLike | None = None,
    save: bool = True,
    index_params: dict | None = None,
    calibration_size: int = 256,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = True,
) -> KNNIndex:
    """A kNN structure over ``pool`` (a Parquet path or a table), built, reused from disk, or exact.

    ``queries`` (raw query embeddings, e.g. the seeds) tell ``auto`` how many searches will run and give
    the sample on which an approximate index's breadth is calibrated to ``target_recall`` at ``k``.
    Saveable indexes of a Parquet pool are stored under ``index_dir`` (default: beside the pool) with a
    fingerprint of the pool and reused while the pool is unchanged; a stale one is rebuilt.
    """
    from broaden.lsb import auto, store

    source = PoolSource.of(pool, columns)
    faiss_metric(metric)
    if index not in INDEX_KINDS:
        raise KNNError(f"unknown index {index!r}; choose one of {', '.join(INDEX_KINDS)}")
    if not 0 < target_recall <= 1:
        raise KNNError(f"target recall must be in (0, 1], got {target_recall}")
    n, dim = source.num_rows, source.dim
    k = min(k, n)  # calibration's exact top-k heaps are sized by k; no query has more than n neighbours
    if queries is not None and np.asarray(queries).shape[1] != dim:
        raise ScoredTableError(
            f"embedding dimension mismatch: the queries have {np.asarray(queries).shape[1]} values per "
            f"{columns.embedding!r} row, {source.name} has {dim}"
        )
    n_queries = 0 if queries is None else len(queries)
    cache = store.IndexCache.for_pool(source, metric, index_dir) if save and not source.is_table else None
    cached = cache.valid_backends() if cache is not None else {}
    if index == "auto":
        choice = auto.choose(n, dim, n_queries=n_queries, memory_gb=memory_gb, cached=cached)
        name, reason = choice.backend, choice.reason
    else:
        name, reason = index, "requested"
    backend = get_backend(name)
    if metric not in backend.capabilities.metrics:
        raise KNNError(f"index {name!r} does not support metric {metric!r}")
    info = {"index": name, "requested": index, "reason": reason, "metric": metric, "pool_rows": n, "dim": dim,
            "exact": backend.capabilities.exact}
    if index == "auto":
        info["estimates_s"] = choice.estimates
    if backend.capabilities.exact:
        return KNNIndex(backend, source, metric, dim, info=info)

    params = cached.get(name, {}).get("params") or backend.default_params(
        n, dim, memory_gb=memory_gb, n_queries=max(n_queries, 1))
    params = {**params, **(index_params or {})}
    check_params(backend, params, n)
    info["params"] = params
    info["factory"] = backend.factory(params)
    rng = np.random.default_rng(seed)
    cal = None
    if queries is not None and len(queries):
        pick = np.sort(rng.choice(len(queries), size=min(calibration_size, len(queries)), replace=False))
        cal = prepare(np.asarray(queries)[pick], metric)

    if cache is not None:
        loaded = cache.load(name, params)
        if loaded is not None:
            idx, ids, meta = loaded
            info.update(reused=True, index_path=str(cache.path(name)), built=meta.get("built"))
            saved = meta.get("calibration") or {}
            if saved.get("k") == k and saved.get("target") == target_recall:
                _record_calibration(info, saved, name)
            else:  # the saved breadth was calibrated for another k or recall target: measure again
                _calibrate(info, idx, backend, params, source, cal, None, k, target_recall, metric, rng,
                           calibration_size, batch_size)
            return KNNIndex(backend, source, metric, dim, params, idx, ids, info["breadth"], info)
        info["stale_removed"] = cache.stale_removed
        if cache.warnings:
            info["index_warning"] = "; ".join(cache.warnings)

    built, ids, truth, timings = _build(source, backend, params, metric, dim, rng, cal, k, batch_size,
                                        show_progress)
    info.update(timings, reused=False)
    _calibrate(info, built, backend, params, source, cal, truth, k, target_recall, metric, rng, calibration_size,
               batch_size)
    knn = KNNIndex(backend, source, metric, dim, params, built, ids, info["breadth"], info)
    if cache is not None:
        info["index_path"] = str(cache.save(name, knn))
    return knn


def _calibrate(info, index, backend, params, source, cal, truth, k, target, metric, rng, calibration_size,
               batch_size) -> None:
    """Calibrate ``index``'s breadth on the query sample ``cal`` (exact ``truth`` computed when None)."""
    t0 = time.perf_counter()
    if cal is None:  # no queries given: calibrate on pool rows (optimistic: each finds itself)
        cal = prepare(source.sample(min(calibration_size, source.num_rows), rng), metric)
        truth = None
    if truth is None:
        truth = _exact_truth(source, cal, k, metric, batch_size)
    calibration = calibrate(index, backend, params, cal, truth, k, target)
    info["calibrate_s"] = round(time.perf_counter() - t0, 3)
    _record_calibration(info, calibration, backend.name)


def _record_calibration(info: dict, calibration: dict, name: str) -> None:
    info.update(breadth=calibration["breadth"], calibration=calibration)
    if not calibration["reached"]:
        info["warning"] = (f"{name} reached recall@{calibration['k']} {calibration['recall']:.3f} at most, below "
                           f"the target {calibration['target']:g}; use index='ivf' or 'flat' for these embeddings")


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


def _exact_truth(source, queries, k, metric, batch_size):
    scan = ExactScan(queries, k, metric)
    for offset, _, x in source.blocks(batch_size=batch_size, validate=False):
        scan.add(offset, prepare(x, metric))
    return scan.result()[1]


def _build(source, backend, params, metric, dim, rng, cal, k, batch_size, show_progress):
    """Train on a sample, then one streaming pass: add each block and score it for calibration."""
    timings = {}
    try:
        index = faiss.index_factory(dim, backend.factory(params), faiss_metric(metric))
    except RuntimeError as exc:  # e.g. a codec FAISS does not know, or PQ m that does not divide dim
        raise KNNError(f"FAISS rejects index {backend.factory(params)!r} for {dim}-d embeddings: "
                       f"{str(exc).strip().splitlines()[-1]}") from None
    backend.configure(index, params)
    gpu = gpu_resources()
    work = index
    if gpu is not None and backend.capabilities.trained:
        try:
            work = faiss.index_cpu_to_gpu(gpu, 0, index)
        except Exception:  # codec without a GPU implementation: build on the CPU
            work = index
    t0 = time.perf_counter()
    if backend.capabilities.trained:
        sample = prepare(source.sample(backend.train_size(source.num_rows, params), rng), metric)
        work.train(sample)
        del sample
    timings["train_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    scan = ExactScan(cal, k, metric, gpu=gpu) if cal is not None else None
    id_parts = []
    with track(f"building {backend.factory(params)}", source.num_rows, show_progress, transient=True) as advance:
        for offset, ids, x in source.blocks(batch_size=batch_size):
            xp = prepare(x, metric)
            work.add(xp)
            if scan is not None:
                scan.add(offset, xp)
            id_parts.append(ids)
            advance(len(ids))
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
    timings["add_s"] = round(time.perf_counter() - t0, 3)
    truth = scan.result()[1] if scan is not None else None
    return index, pa.concat_arrays(id_parts), truth, timings
