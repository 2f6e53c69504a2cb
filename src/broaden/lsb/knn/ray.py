"""Sharded kNN on a Ray cluster, built on the Ray engine's shards (DESIGN.md §6): the engine knows no kNN.

One actor per shard builds its units' indexes with :func:`~broaden.lsb.knn.build.build_index` (same
backends, same ``auto`` choice, applied to the shard) and keeps them for later calls; a search merges the
shards' per-query top-k by (similarity desc, pool position asc) into global positions, so exact indexes
return exactly the local neighbours. Actors are restarted (``max_restarts``) and rebuild their shard, and
their searches are retried (``max_task_retries``). The actors live as long as the engine
(:attr:`RayEngine.held`); only the most recent ``KNN_CACHE`` sharded indexes are kept.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import ray

from broaden.engines.ray_engine import ACTOR_RESTARTS, TASK_RETRIES, RayEngine, gather
from broaden.engines.shards import Shard
from broaden._lazy import renamed
from broaden.errors import KNNError
from broaden.io.ids import IdSet
from broaden.io.pool import Pool
from broaden.io.table import BATCH_SIZE, DEFAULT_COLUMNS, Columns
from broaden.lsb.knn.build import build_index, check_request
from broaden.lsb.knn.index import Neighbors
from broaden.lsb.knn.store import default_dir

# kNN actors idle between searches and may stay alive across calls: they reserve almost nothing (§7) and
# are spread over the nodes.
KNN_ACTOR_CPUS = 0.01
KNN_CACHE = 2


def merge_neighbours(sim: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the best ``k`` of several neighbour lists by (similarity desc, position asc); −1 = none."""
    missing = pos < 0
    key_sim = np.where(missing, np.inf, -np.nan_to_num(sim, nan=-np.inf))
    key_pos = np.where(missing, np.iinfo(np.int64).max, pos)
    order = np.lexsort((key_pos, key_sim), axis=-1)[:, :k]
    sim, pos = np.take_along_axis(sim, order, 1), np.take_along_axis(pos, order, 1)
    if sim.shape[1] < k:  # fewer candidates than k in total
        pad = ((0, 0), (0, k - sim.shape[1]))
        sim, pos = np.pad(sim, pad, constant_values=np.nan), np.pad(pos, pad, constant_values=-1)
    return sim, pos


class FoundIds:
    """The ids of the pool positions a search returned, addressed by global position like ``KNNIndex.ids``."""

    def __init__(self, positions: np.ndarray, ids: pa.Array):
        order = np.argsort(positions, kind="stable")
        self.positions, self.ids = positions[order], ids.take(pa.array(order))

    def take(self, indices) -> pa.Array:
        idx = np.asarray(indices.to_numpy(zero_copy_only=False) if isinstance(indices, pa.Array) else indices)
        at = np.searchsorted(self.positions, idx)
        if idx.size and ((at >= len(self.positions)).any() or (self.positions[np.minimum(at, len(self.positions) - 1)] != idx).any()):
            raise IndexError("position was not returned by this search")
        return self.ids.take(pa.array(at, type=pa.int64()))

    def __len__(self) -> int:
        return len(self.positions)


@ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES)
class _KNNShard:
    """Builds (or loads) the indexes of one shard's units once and answers searches over them."""

    def __init__(self, shard: Shard, columns: Columns, build_kwargs: dict, queries, index_root: str | None,
                 threads: int):
        faiss.omp_set_num_threads(max(1, threads))
        self.parts = []
        for unit in shard.units:
            kwargs = dict(build_kwargs, queries=queries, show_progress=False)
            if index_root is not None:
                kwargs["index_dir"] = index_root
            self.parts.append((unit.offset, build_index(unit.data, columns=columns, **kwargs)))

    def info(self) -> list[dict]:
        return [dict(knn.info, offset=offset) for offset, knn in self.parts]

    def search(self, queries: np.ndarray, k: int, exclude, batch_size: int):
        sims, poss, found_pos, found_ids = [], [], [], []
        for offset, knn in self.parts:
            nb = knn.search(queries, k, exclude=exclude, batch_size=batch_size, show_progress=False)
            sims.append(nb.similarity)
            poss.append(np.where(nb.positions >= 0, nb.positions + offset, -1))
            local = np.unique(nb.positions[nb.positions >= 0])
            found_pos.append(local + offset)
            found_ids.append(knn.ids.take(pa.array(local, type=pa.int64())))
        sim, pos = merge_neighbours(np.hstack(sims), np.hstack(poss), k)
        kept = np.unique(pos[pos >= 0])
        all_pos = np.concatenate(found_pos)  # ascending: units are in row order, each list sorted
        ids = pa.concat_arrays([a.cast(found_ids[0].type) for a in found_ids])
        return sim, pos, kept, ids.take(pa.array(np.searchsorted(all_pos, kept), type=pa.int64()))


class ShardedIndex:
    """A kNN structure spread over Ray actors; answers like :class:`~broaden.lsb.knn.index.KNNIndex`.

    ``search`` returns global pool positions (the local engine's positions) and sets ``ids`` to the ids
    of the positions it returned, which is all :func:`broaden.lsb.lsb` reads from it.
    """

    def __init__(self, actors: list, shards: list[Shard], dim: int, metric: str, info: dict, keep: list):
        self.actors, self.shards, self.dim, self.metric, self.info = actors, shards, dim, metric, info
        self._keep = keep  # constructor arguments in the object store: a restarted actor needs them
        self.ids: FoundIds | None = None

    def search(self, queries: np.ndarray, k: int, *, exclude=None, batch_size: int = BATCH_SIZE,
               show_progress: bool = True):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise KNNError(f"queries have shape {queries.shape}; the pool's embeddings have dimension {self.dim}")
        excl = exclude if isinstance(exclude, IdSet) or exclude is None else IdSet(np.asarray(exclude))
        q_ref, x_ref = ray.put(queries), ray.put(excl)
        refs = [a.search.remote(q_ref, int(k), x_ref, batch_size) for a in self.actors]
        parts = gather(refs, [s.rows for s in self.shards], "exact kNN over the pool (ray)" if show_progress else None)
        sim, pos = merge_neighbours(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]), int(k))
        found = [p for p in parts if len(p[2])]
        if found:
            self.ids = FoundIds(np.concatenate([p[2] for p in found]),
                                pa.concat_arrays([p[3].cast(found[0][3].type) for p in found]))
        else:
            self.ids = FoundIds(np.empty(0, np.int64), pa.array([], pa.int64()))
        return Neighbors(pos, sim, self.ids)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


@renamed(save="save_index")
def build_sharded_index(engine: RayEngine, pool, *, columns: Columns = DEFAULT_COLUMNS,
                        queries: np.ndarray | None = None, index: str = "auto", metric: str = "cosine",
                        index_dir=None, save_index: bool = True, show_progress: bool = True, **kwargs) -> ShardedIndex:
    """One Ray actor per shard of ``engine`` runs :func:`~broaden.lsb.knn.build.build_index` (same
    arguments) on its units.

    Actors live as long as the engine (:attr:`RayEngine.held`) and are reused by later calls on the same,
    unchanged pool with the same settings. Saved indexes go to ``index_dir`` (default ``POOL.lsb-index``)
    under ``shards/``.
    """
    source = Pool.of(pool, columns)
    pool = source.data
    dim = check_request(source, index=index, metric=metric, queries=queries)
    shards = engine.plan(pool)
    settings = dict(kwargs, index=index, metric=metric, save_index=save_index)
    key = None
    held = engine.held
    if not source.is_table:
        key = "knn:" + hashlib.sha256(json.dumps(
            [source.fingerprint(), [[str(u.data) for u in s.units] for s in shards], settings,
             [columns.id, columns.embedding], str(index_dir)], sort_keys=True, default=str).encode()).hexdigest()
        cached = held.pop(key, None)
        if cached is not None and cached.actors:
            held[key] = cached  # most recently used: evicted last
            cached.info = dict(cached.info, reused=True)
            return cached
    root = None
    if save_index and not source.is_table:
        root = str(Path(index_dir) / "shards" if index_dir is not None else default_dir(Path(pool)) / "shards")
    threads = max(1, int(engine.cpus // len(shards)))
    q_ref = ray.put(None if queries is None else np.asarray(queries, np.float32))
    actor = _KNNShard.options(num_cpus=KNN_ACTOR_CPUS, scheduling_strategy="SPREAD")
    actors = [actor.remote(s, columns, settings, q_ref, root, threads) for s in shards]
    infos = gather([a.info.remote() for a in actors], [s.rows for s in shards],
                   "building shard indexes (ray)" if show_progress else None)
    infos = [i for shard_infos in infos for i in shard_infos]
    kinds = sorted({i["index"] for i in infos})
    info = {
        "index": kinds[0] if len(kinds) == 1 else "+".join(kinds), "requested": index, "metric": metric,
        "engine": "ray", "shards": len(shards), "units": len(infos), "pool_rows": source.num_rows, "dim": dim,
        "exact": all(i.get("exact") for i in infos), "reused": False,
        "reason": f"sharded over {len(shards)} Ray actors; per unit: {infos[0].get('reason')}",
        "shard_info": infos,
    }
    sharded = ShardedIndex(actors, shards, dim, metric, info, [q_ref])
    if key is not None:
        held[key] = sharded
        mine = [k for k in held if k.startswith("knn:")]
        for old in mine[:-KNN_CACHE]:  # oldest first (dicts keep insertion order)
            held.pop(old).close()
    return sharded


__all__ = ["FoundIds", "ShardedIndex", "build_sharded_index", "merge_neighbours"]
