"""Execution engines (DESIGN.md §6, §8): where the work over a pool runs — this process or a Ray cluster.

An engine offers three operations over a pool (a Parquet file, a directory of Parquet files or a
``pa.Table``), and every command that touches the pool (``score``, ``select``, ``lsb``, ``round start``)
takes one as ``engine=`` (``--engine local|ray [--ray-address ADDR]`` on the command line):

- :meth:`Engine.fold` — a map-reduce over the validated, exclusion-filtered record batches of the pool:
  ``init() -> state``, ``step(state, keys, batch) -> state``, ``merge(a, b) -> state``. The local engine
  runs one fold in order; the Ray engine runs one fold per shard in Ray tasks and merges the partial
  states in shard order, so a fold whose merge is exact (counts, top-k) gives identical results.
- :meth:`Engine.top_k` — the best ``n`` rows by a per-batch priority with the one
  (score desc, id asc) tie-break: a fold over :class:`broaden.topk.TopK`.
- :meth:`Engine.map_batches` — a function over the pool's batches, results streamed back in row order
  (batch scoring; Ray Data actors, on GPUs when the cluster has them).

Engines know nothing of kNN or strategies; LSB's sharded kNN on Ray (:mod:`broaden.lsb.knn.ray`) is built on
the Ray engine's shards.

Ray is an optional extra (``pip install 'broaden[ray]'``); nothing imports it until ``get_engine("ray")``.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from broaden.errors import EngineError

ENGINES = ("local", "ray")
ADDRESS_ENV = "RAY_ADDRESS"


@runtime_checkable
class Engine(Protocol):
    """What the pool-touching commands call; see the module docstring."""

    name: str

    def fold(self, pool, columns, *, init: Callable[[], Any], step: Callable[[Any, np.ndarray, pa.RecordBatch], Any],
             merge: Callable[[Any, Any], Any], prob_cols: Sequence[str] = (), extra_cols: Sequence[str] = (),
             exclude=None, batch_size: int = ..., description: str = ...) -> Any: ...

    def top_k(self, pool, n: int, columns, priority: Callable[[np.ndarray, pa.RecordBatch], np.ndarray], *,
              prob_cols: Sequence[str] = (), extra_cols: Sequence[str] = (), exclude=None,
              batch_size: int = ..., description: str = ...) -> tuple[np.ndarray, np.ndarray]: ...

    def map_batches(self, make_fn: Callable[[str], Callable[[pa.Table], pa.Table]], source, *,
                    columns: Sequence[str] | None = None, batch_size: int = ..., device: str | None = None,
                    description: str = ...) -> Iterator[pa.Table]: ...

    def close(self) -> None: ...


@contextlib.contextmanager
def engine_scope(engine: str | Engine | None) -> Iterator[Engine]:
    """The engine for one API call: a given :class:`Engine` is used as is (its owner closes it); one named
    here is created once for the whole call and closed when the call ends, so a call never leaks a Ray
    session or builds several."""
    owned = not isinstance(engine, Engine)
    resolved = get_engine(engine)
    try:
        yield resolved
    finally:
        if owned:
            resolved.close()


def get_engine(name: str | Engine | None = "local", address: str | None = None, **options) -> Engine:
    """The engine called ``name`` (``"local"`` or ``"ray"``); an :class:`Engine` is returned unchanged.

    For Ray, ``address`` (default: the ``RAY_ADDRESS`` environment variable, else a Ray instance started
    in this process) names the cluster; ``options`` go to :class:`broaden.engines.ray_engine.RayEngine`.
    """
    if name is None:
        name = "local"
    if not isinstance(name, str):
        return name
    if name == "local":
        from broaden.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        try:
            from broaden.engines.ray_engine import RayEngine
        except ModuleNotFoundError as exc:
            if exc.name != "ray":
                raise
            raise EngineError(
                "--engine ray needs Ray: pip install 'broaden[ray]' (or pip install 'ray[data]>=2.9')"
            ) from None
        return RayEngine(address=address if address is not None else os.environ.get(ADDRESS_ENV), **options)
    raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ADDRESS_ENV", "ENGINES", "Engine", "EngineError", "get_engine"]
