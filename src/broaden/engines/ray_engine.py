"""The Ray engine (DESIGN.md §6): the local engine's work, split over a Ray cluster and merged exactly.

- ``fold`` / ``top_k``: one Ray task per shard runs :meth:`LocalEngine.fold` over its units (per-shard
  top-k on the workers); the driver merges the partial states in shard order and checks ids for
  duplicates across shards, as the local engine's validator does over the whole pool.
- ``map_batches``: Ray Data ``read_parquet(...).map_batches(actor, compute=ActorPoolStrategy(size=n))``
  with fractional ``num_cpus`` on readers and actors (§7: on a 2-CPU node, actors reserving whole CPUs
  starved the read tasks and the job hung) and one GPU per actor when the cluster has GPUs; blocks come
  back in row order.
- ``build_index``: one actor per shard builds its units' indexes with :func:`broaden.lsb.knn.build_index`
  (same backends, same ``auto`` choice, applied to the shard) and keeps them for later calls; a search
  merges the shards' per-query top-k by (similarity desc, pool position asc) into global positions.

Fault tolerance: shard tasks are pure functions of their shard and are retried when their worker dies
(``max_retries``); kNN actors are restarted (``max_restarts``) and rebuild their shard, and their
searches are retried (``max_task_retries``). Exceptions raised by our own code are not retried: a bad
row fails the same way every time, and its :class:`~broaden.errors.BroadenError` reaches the caller as is.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from broaden.engines import EngineError
from broaden.engines.local import LocalEngine
from broaden.engines.shards import Shard, Unit, plan_shards, pool_units
from broaden.errors import BroadenError, ScoredTableError
from broaden.io import DEFAULT_COLUMNS, Columns, Validator, id_keys, read_table
from broaden.progress import track
from broaden.select.pool import BATCH_SIZE

TASK_RETRIES = 3
ACTOR_RESTARTS = 3
# CPU reservations kept fractional so short tasks (Parquet reads, shard folds) always find room to start
# (§7). kNN actors idle between searches and may stay alive across calls: they reserve almost nothing and
# are spread over the nodes; only the most recent KNN_CACHE sharded indexes are kept.
KNN_ACTOR_CPUS = 0.01
KNN_CACHE = 2
MAP_ACTOR_SHARE = 0.5
READ_TASK_CPUS = 0.25


def _unwrap(refs):
    """``ray.get`` that re-raises our own errors unwrapped (the CLI prints a BroadenError as one line)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BroadenError):
            raise cause from None
        raise


# ------------------------------------------------------------------------------------------ folds
def _unit_ids(unit: Unit, id_col: str) -> np.ndarray:
    data = unit.data.select([id_col]) if isinstance(unit.data, pa.Table) else read_table(unit.data, columns=[id_col])
    return id_keys(data.column(0))


@ray.remote(max_retries=TASK_RETRIES)
def _fold_shard(shard: Shard, columns: Columns, spec, prob_cols, extra_cols, exclude, batch_size, description):
    init, step, merge = spec
    local = LocalEngine()
    state, ids = None, []
    for unit in shard.units:
        part = local.fold(unit.data, columns, init=init, step=step, prob_cols=prob_cols, extra_cols=extra_cols,
                          exclude=exclude, batch_size=batch_size, description=description)
        state = part if state is None else merge(state, part)
        ids.append((unit.name, _unit_ids(unit, columns.id)))
    return state, ids


def check_unique_ids(parts: Sequence[tuple[str, np.ndarray]], id_col: str) -> None:
    """Raise the local engine's duplicate-id error when two units share an id."""
    validator = Validator(columns=Columns(id=id_col), require=("id",))
    for source, keys in parts:
        validator(pa.record_batch({id_col: pa.array(keys)}), source)
    validator.finish()


# ------------------------------------------------------------------------------------- map_batches
class _BatchActor:
    """A Ray Data actor holding ``make_fn(device)`` (e.g. a loaded model) for all its batches."""

    def __init__(self, make_fn, device):
        if device is None:
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.fn = make_fn(device)

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.fn(table)


@contextlib.contextmanager
def _data_context(**settings):
    ctx = ray.data.DataContext.get_current()
    saved = {"preserve_order": ctx.execution_options.preserve_order,
             "enable_progress_bars": ctx.enable_progress_bars}
    ctx.execution_options.preserve_order = settings["preserve_order"]
    ctx.enable_progress_bars = settings["enable_progress_bars"]
    try:
        yield ctx
    finally:
        ctx.execution_options.preserve_order = saved["preserve_order"]
        ctx.enable_progress_bars = saved["enable_progress_bars"]


# --------------------------------------------------------------------------------------- sharded kNN
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
        import faiss

        from broaden.lsb.knn import build_index

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
    """A kNN structure spread over Ray actors; answers like :class:`broaden.lsb.knn.KNNIndex`.

    ``search`` returns global pool positions (the local engine's positions) and sets ``ids`` to the ids
    of the positions it returned, which is all :func:`broaden.lsb.lsb` reads from it.
    """

    def __init__(self, actors: list, shards: list[Shard], dim: int, metric: str, info: dict, keep: list):
        self.actors, self.shards, self.dim, self.metric, self.info = actors, shards, dim, metric, info
        self._keep = keep  # constructor arguments in the object store: a restarted actor needs them
        self.ids: FoundIds | None = None

    def search(self, queries: np.ndarray, k: int, *, exclude=None, batch_size: int = BATCH_SIZE,
               show_progress: bool = True):
        from broaden.lsb.knn import KNNError, Neighbors
        from broaden.select.pool import IdSet

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise KNNError(f"queries have shape {queries.shape}; the pool's embeddings have dimension {self.dim}")
        excl = exclude if isinstance(exclude, IdSet) or exclude is None else IdSet(np.asarray(exclude))
        q_ref, x_ref = ray.put(queries), ray.put(excl)
        refs = [a.search.remote(q_ref, int(k), x_ref, batch_size) for a in self.actors]
        parts = _gather(refs, [s.rows for s in self.shards], "exact kNN over the pool (ray)" if show_progress else None)
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


def _gather(refs: list, rows: list[int], description: str | None) -> list:
    """``ray.get`` in submission order, advancing a progress bar by each shard's rows as it finishes."""
    if description is None:
        return _unwrap(refs)
    index = {ref: i for i, ref in enumerate(refs)}
    with track(description, sum(rows), transient=True) as advance:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            _unwrap(done)  # surfaces a failure as soon as it happens
            advance(rows[index[done[0]]])
    return _unwrap(refs)


# -------------------------------------------------------------------------------------------- engine
class RayEngine(LocalEngine):
    """Run on Ray: a cluster at ``address`` (``"auto"``, ``"ray://host:10001"``) or a local instance.

    ``shards`` (default: the cluster's CPU count) or ``shard_rows`` set how the pool is split; ``actors``
    fixes the scoring actor pool size (default: one per GPU, else one per CPU). ``init_options`` go to
    ``ray.init`` when this engine starts Ray itself (e.g. ``num_cpus``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, shards: int | None = None, shard_rows: int | None = None,
                 actors: int | None = None, init_options: dict | None = None):
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         **(init_options or {}))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EngineError(f"cannot start or reach Ray at {address or 'a new local instance'}: {exc}") from None
            self._started = True
        resources = ray.cluster_resources()
        self.cpus = float(resources.get("CPU", 1.0))
        self.gpus = float(resources.get("GPU", 0.0))
        self.shards, self.shard_rows, self.actors = shards, shard_rows, actors
        self._indexes: dict[str, ShardedIndex] = {}

    # -- helpers
    def _plan(self, pool) -> list[Shard]:
        return plan_shards(pool_units(pool), shards=self.shards or max(1, int(self.cpus)), shard_rows=self.shard_rows)

    @property
    def _task_cpus(self) -> float:
        return min(1.0, self.cpus / 2)

    # -- fold
    def fold(self, pool, columns, *, init, step, merge, prob_cols: Sequence[str] = (), extra_cols: Sequence[str] = (),
             exclude=None, batch_size: int = BATCH_SIZE, description: str = "scanning pool") -> Any:
        """:meth:`LocalEngine.fold` on every shard in Ray tasks, partial states merged in shard order."""
        from broaden.select.pool import SelectionError, pool_names

        read = list(dict.fromkeys([columns.id, *prob_cols, *extra_cols]))
        names = pool_names(pool)
        missing = [c for c in read if c not in names]
        if missing:
            source = "pool table" if isinstance(pool, pa.Table) else str(pool)
            raise SelectionError(f"{source}: missing column(s) {', '.join(map(repr, missing))}; "
                                 f"found {', '.join(names)}")
        shards = self._plan(pool)
        spec, excl = ray.put((init, step, merge)), ray.put(exclude)
        task = _fold_shard.options(num_cpus=self._task_cpus)
        refs = [task.remote(s, columns, spec, list(prob_cols), list(extra_cols), excl, batch_size, description)
                for s in shards]
        results = _gather(refs, [s.rows for s in shards], f"{description} (ray, {len(shards)} shards)")
        check_unique_ids([p for _, ids in results for p in ids], columns.id)
        state = results[0][0]
        for part, _ in results[1:]:
            state = merge(state, part)
        return state

    # -- map_batches
    def map_batches(self, make_fn: Callable[[str], Callable[[pa.Table], pa.Table]], source, *,
                    columns: Sequence[str] | None = None, batch_size: int = 1024, device: str | None = None,
                    description: str = "mapping batches") -> Iterator[pa.Table]:
        """``make_fn(device)`` in each of a pool of Ray Data actors, applied to batches of ``source``.

        ``device=None`` puts one actor on each GPU when the cluster has GPUs (``"cuda"``), else CPU actors.
        """
        from broaden.io import count_rows, parquet_files

        use_gpu = (device is None and self.gpus > 0) or (device or "").startswith("cuda")
        size = self.actors or (max(1, int(self.gpus)) if use_gpu else max(1, int(self.cpus)))
        actor_cpus = round(min(1.0, MAP_ACTOR_SHARE * self.cpus / size), 3)
        with _data_context(preserve_order=True, enable_progress_bars=False):
            if isinstance(source, pa.Table):
                ds = ray.data.from_arrow(source.select(list(columns)) if columns is not None else source)
                total = source.num_rows
            else:
                parquet_files(source)  # the local engine's error for a missing or empty pool
                # One path, not a file list: Ray 2.60 resolves a list in threads that race on importing
                # fsspec's HTTP filesystem when aiohttp is absent, failing at random.
                ds = ray.data.read_parquet(str(source), partitioning=None, num_cpus=READ_TASK_CPUS)
                if columns is not None:
                    ds = ds.select_columns(list(columns))
                total = count_rows(source)
            ds = ds.map_batches(_BatchActor, fn_constructor_args=(make_fn, device), batch_size=batch_size,
                                batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
                                num_cpus=actor_cpus, num_gpus=1 if use_gpu else None)
            with track(f"{description} (ray, {size} actors)", total, transient=True) as advance:
                try:
                    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                        yield table
                        advance(table.num_rows)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BroadenError):
                        raise cause from None
                    raise

    # -- sharded kNN
    def build_index(self, pool, *, columns: Columns = DEFAULT_COLUMNS, queries: np.ndarray | None = None,
                    index: str = "auto", metric: str = "cosine", index_dir=None, save: bool = True,
                    show_progress: bool = True, **kwargs) -> ShardedIndex:
        """One Ray actor per shard runs :func:`broaden.lsb.knn.build_index` (same arguments) on its units.

        Actors live as long as the engine and are reused by later calls on the same, unchanged pool with
        the same settings. Saved indexes go to ``index_dir`` (default ``POOL.lsb-index``) under ``shards/``.
        """
        from broaden.lsb.knn import INDEX_KINDS, KNNError
        from broaden.lsb.source import PoolSource, faiss_metric
        from broaden.lsb.store import default_dir

        source = PoolSource.of(pool, columns)
        pool = source.data
        faiss_metric(metric)
        if index not in INDEX_KINDS:
            raise KNNError(f"unknown index {index!r}; choose one of {', '.join(INDEX_KINDS)}")
        dim = source.dim
        if queries is not None and np.asarray(queries).shape[1] != dim:
            raise ScoredTableError(
                f"embedding dimension mismatch: the queries have {np.asarray(queries).shape[1]} values per "
                f"{columns.embedding!r} row, {source.name} has {dim}")
        shards = self._plan(pool)
        settings = dict(kwargs, index=index, metric=metric, save=save)
        key = None
        if not source.is_table:
            key = hashlib.sha256(json.dumps(
                [source.fingerprint(), [[str(u.data) for u in s.units] for s in shards], settings,
                 [columns.id, columns.embedding], str(index_dir)], sort_keys=True, default=str).encode()).hexdigest()
            cached = self._indexes.pop(key, None)
            if cached is not None and cached.actors:
                self._indexes[key] = cached  # most recently used: evicted last
                cached.info = dict(cached.info, reused=True)
                return cached
        root = None
        if save and not source.is_table:
            root = str(Path(index_dir) / "shards" if index_dir is not None else default_dir(Path(pool)) / "shards")
        threads = max(1, int(self.cpus // len(shards)))
        q_ref = ray.put(None if queries is None else np.asarray(queries, np.float32))
        actor = _KNNShard.options(num_cpus=KNN_ACTOR_CPUS, scheduling_strategy="SPREAD")
        actors = [actor.remote(s, columns, settings, q_ref, root, threads) for s in shards]
        infos = _gather([a.info.remote() for a in actors], [s.rows for s in shards],
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
            self._indexes[key] = sharded
            while len(self._indexes) > KNN_CACHE:  # oldest first (dicts keep insertion order)
                self._indexes.pop(next(iter(self._indexes))).close()
        return sharded

    def close(self) -> None:
        """Stop the kNN actors and, when this engine started Ray, Ray itself."""
        for sharded in self._indexes.values():
            sharded.close()
        self._indexes.clear()
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def __reduce__(self):
        # A closure shipped to a worker may capture the engine: nested work there runs locally, and the
        # engine's actors and Ray state never travel.
        return (LocalEngine, ())

__all__ = ["FoundIds", "RayEngine", "ShardedIndex", "check_unique_ids", "merge_neighbours"]
