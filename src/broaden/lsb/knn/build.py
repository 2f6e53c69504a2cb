"""Build a kNN structure over a pool: exact, reused from disk, or trained, filled and calibrated.

Approximate indexes are trained on a sample of the pool, filled batch by batch while the pool streams
past, and their search breadth (nprobe / efSearch) is calibrated against exact search on a sample of the
real queries (:mod:`.calibrate`).
"""
from __future__ import annotations

import os
import time

import faiss
import numpy as np
import pyarrow as pa

from broaden._lazy import renamed
from broaden.errors import KNNError, ScoredTableError
from broaden.io.pool import Pool
from broaden.io.table import BATCH_SIZE, DEFAULT_COLUMNS, Columns
from broaden.lsb.knn import auto, store
from broaden.lsb.knn.backends import INDEX_KINDS, Backend, check_params, faiss_metric, get_backend, gpu_resources, prepare
from broaden.lsb.knn.calibrate import calibrate
from broaden.lsb.knn.exact import ExactScan
from broaden.lsb.knn.index import KNNIndex
from broaden.progress import track


@renamed(save="save_index")
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
    save_index: bool = True,
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
    source = Pool.of(pool, columns)
    if not 0 < target_recall <= 1:
        raise KNNError(f"target recall must be in (0, 1], got {target_recall}")
    dim = check_request(source, index=index, metric=metric, queries=queries)
    n = source.num_rows
    k = min(k, n)  # calibration's exact top-k heaps are sized by k; no query has more than n neighbours
    n_queries = 0 if queries is None else len(queries)
    cache = store.IndexCache.for_pool(source, metric, index_dir) if save_index and not source.is_table else None
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


def check_request(source: Pool, *, index: str, metric: str, queries: np.ndarray | None) -> int:
    """The checks every kNN build makes before any work (on one machine or sharded): a known index kind
    and metric, and queries as wide as the pool's embeddings; returns that width."""
    faiss_metric(metric)
    if index not in INDEX_KINDS:
        raise KNNError(f"unknown index {index!r}; choose one of {', '.join(INDEX_KINDS)}")
    dim = source.dim
    if queries is not None and np.asarray(queries).shape[1] != dim:
        raise ScoredTableError(
            f"embedding dimension mismatch: the queries have {np.asarray(queries).shape[1]} values per "
            f"{source.columns.embedding!r} row, {source.name} has {dim}"
        )
    return dim


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
