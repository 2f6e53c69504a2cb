"""The local engine: every operation runs in this process, streaming the pool one record batch at a time.

It is also the per-shard worker of the Ray engine, which runs these very methods on each shard and
merges their results, so both engines share one implementation of the work itself.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from broaden.io.pool import Pool
from broaden.io.table import BATCH_SIZE
from broaden.topk import TopK, merge_top


def _push_top(priority):
    def step(top: TopK, keys: np.ndarray, batch: pa.RecordBatch) -> TopK:
        top.push(priority(keys, batch), keys)
        return top

    return step


class LocalEngine:
    """Run in this process (the default engine)."""

    name = "local"

    def fold(self, pool, columns, *, init: Callable[[], Any], step, merge=None, prob_cols: Sequence[str] = (),
             extra_cols: Sequence[str] = (), exclude=None, batch_size: int = BATCH_SIZE,
             description: str = "scanning pool") -> Any:
        """``step`` over the eligible batches of :meth:`broaden.io.pool.Pool.batches`, in row order.

        ``merge`` is not needed here (one partial state); it is part of the signature so that callers
        are engine-agnostic.
        """
        state = init()
        for keys, batch in Pool.of(pool, columns).batches(prob_cols=prob_cols, extra_cols=extra_cols, exclude=exclude,
                                                          batch_size=batch_size, description=description):
            state = step(state, keys, batch)
        return state

    def top_k(self, pool, n: int, columns, priority, *, prob_cols: Sequence[str] = (),
              extra_cols: Sequence[str] = (), exclude=None, batch_size: int = BATCH_SIZE,
              description: str = "scoring pool") -> tuple[np.ndarray, np.ndarray]:
        """Best ``n`` eligible ids by ``priority(keys, batch)`` (desc, ties by id asc) and their priorities."""
        top = self.fold(pool, columns, init=lambda: TopK(n), step=_push_top(priority), merge=merge_top,
                        prob_cols=prob_cols, extra_cols=extra_cols, exclude=exclude, batch_size=batch_size,
                        description=description)
        return top.result()

    def map_batches(self, make_fn: Callable[[str], Callable[[pa.Table], pa.Table]], source, *,
                    columns: Sequence[str] | None = None, batch_size: int = 1024, device: str | None = None,
                    description: str = "mapping batches") -> Iterator[pa.Table]:
        """``make_fn(device)(table)`` for each batch of ``source`` (Parquet path or table), in row order."""
        fn = make_fn(device or "cpu")
        for batch in Pool.of(source).stream(columns, batch_size):
            yield fn(pa.Table.from_batches([batch]))

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
