"""The Ray engine (DESIGN.md §6): the local engine's work, split over a Ray cluster and merged exactly.

- ``fold`` / ``top_k``: one Ray task per shard runs :meth:`LocalEngine.fold` over its units (per-shard
  top-k on the workers); the driver merges the partial states in shard order and checks ids for
  duplicates across shards, as the local engine's validator does over the whole pool.
- ``map_batches``: Ray Data ``read_parquet(...).map_batches(actor, compute=ActorPoolStrategy(size=n))``
  with fractional ``num_cpus`` on readers and actors (§7: on a 2-CPU node, actors reserving whole CPUs
  starved the read tasks and the job hung) and one GPU per actor when the cluster has GPUs; blocks come
  back in row order.

The engine knows nothing of kNN or strategies: work that keeps state on the cluster (LSB's sharded kNN
actors, :mod:`broaden.lsb.knn.ray`) builds on :meth:`RayEngine.plan`, :func:`gather` and :attr:`RayEngine.held`.

Fault tolerance: shard tasks are pure functions of their shard and are retried when their worker dies
(``max_retries``); actors built on the engine use ``ACTOR_RESTARTS`` and ``TASK_RETRIES``. Exceptions
raised by our own code are not retried: a bad row fails the same way every time, and its :class:`~broaden.errors.BroadenError` reaches the caller as is.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from broaden.errors import EngineError
from broaden.engines.local import LocalEngine
from broaden.engines.shards import Shard, Unit, plan_shards, pool_units
from broaden.errors import BroadenError, SelectionError
from broaden.io.pool import Pool
from broaden.io.table import BATCH_SIZE, Columns, Validator, parquet_files
from broaden.progress import track

TASK_RETRIES = 3
ACTOR_RESTARTS = 3
# CPU reservations kept fractional so short tasks (Parquet reads, shard folds) always find room to start (§7).
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
    return Pool(unit.data, Columns(id=id_col)).ids()


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


# ------------------------------------------------------------------------------------------ helpers
def gather(refs: list, rows: list[int], description: str | None) -> list:
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
        #: Objects that live as long as the engine, by key, each closed with it (e.g. LSB's sharded kNN
        #: actors, :mod:`broaden.lsb.knn.ray`): work built on the engine keeps its state here.
        self.held: dict[str, Any] = {}

    # -- helpers
    def plan(self, pool) -> list[Shard]:
        """The pool's shards for this cluster (:func:`broaden.engines.shards.plan_shards`)."""
        return plan_shards(pool_units(pool), shards=self.shards or max(1, int(self.cpus)), shard_rows=self.shard_rows)

    @property
    def _task_cpus(self) -> float:
        return min(1.0, self.cpus / 2)

    # -- fold
    def fold(self, pool, columns, *, init, step, merge, prob_cols: Sequence[str] = (), extra_cols: Sequence[str] = (),
             exclude=None, batch_size: int = BATCH_SIZE, description: str = "scanning pool") -> Any:
        """:meth:`LocalEngine.fold` on every shard in Ray tasks, partial states merged in shard order."""
        pool = Pool.of(pool, columns)
        pool.require([columns.id, *prob_cols, *extra_cols], SelectionError)
        shards = self.plan(pool.data)
        spec, excl = ray.put((init, step, merge)), ray.put(exclude)
        task = _fold_shard.options(num_cpus=self._task_cpus)
        refs = [task.remote(s, columns, spec, list(prob_cols), list(extra_cols), excl, batch_size, description)
                for s in shards]
        results = gather(refs, [s.rows for s in shards], f"{description} (ray, {len(shards)} shards)")
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
        use_gpu = (device is None and self.gpus > 0) or (device or "").startswith("cuda")
        size = self.actors or (max(1, int(self.gpus)) if use_gpu else max(1, int(self.cpus)))
        actor_cpus = round(min(1.0, MAP_ACTOR_SHARE * self.cpus / size), 3)
        pool = Pool.of(source)
        with _data_context(preserve_order=True, enable_progress_bars=False):
            if pool.is_table:
                ds = ray.data.from_arrow(pool.data.select(list(columns)) if columns is not None else pool.data)
            else:
                parquet_files(pool.data)  # the local engine's error for a missing or empty pool
                # One path, not a file list: Ray 2.60 resolves a list in threads that race on importing
                # fsspec's HTTP filesystem when aiohttp is absent, failing at random.
                ds = ray.data.read_parquet(str(pool.data), partitioning=None, num_cpus=READ_TASK_CPUS)
                if columns is not None:
                    ds = ds.select_columns(list(columns))
            total = pool.num_rows
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

    def close(self) -> None:
        """Close what the engine holds (:attr:`held`) and, when this engine started Ray, Ray itself."""
        for value in self.held.values():
            value.close()
        self.held.clear()
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def __reduce__(self):
        # A closure shipped to a worker may capture the engine: nested work there runs locally, and the
        # engine's actors and Ray state never travel.
        return (LocalEngine, ())

__all__ = ["RayEngine", "check_unique_ids", "gather"]
