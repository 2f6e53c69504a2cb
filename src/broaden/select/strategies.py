"""Statistical strategies (DESIGN.md §2): random, least_confident, margin, entropy, qbc, bald.

Each is one streaming pass over the pool: a per-batch priority (higher = pick first) feeds the shared
:class:`~broaden.topk.TopK`. Reported scores are the paper's values (margin is reported as the
margin itself, ranked ascending).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from broaden.errors import SelectionError
from broaden.io import list_matrix
from broaden.io.pool import Pool
from broaden.select import scores as S
from broaden.select.registry import SelectContext, register_strategy

Priority = Callable[[np.ndarray, pa.RecordBatch], np.ndarray]


def stream_top(
    pool, n: int, ctx: SelectContext, priority: Priority, *, prob_cols: Sequence[str],
    extra_cols: Sequence[str] = (), description: str = "scoring pool",
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` eligible ids by ``priority(keys, batch)`` (desc, ties by id) in one pass."""
    return ctx.runner.top_k(pool, n, ctx.columns, priority, prob_cols=prob_cols, extra_cols=extra_cols,
                            exclude=ctx.exclude, batch_size=ctx.batch_size, description=description)


def batch_probs(batch: pa.RecordBatch, col: str) -> np.ndarray:
    return list_matrix(batch.column(col), dtype=np.float64)


# ------------------------------------------------------------------------------------ random keys
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic), vectorised."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def random_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) key per id, a pure function of (seed, id): random selection is reproducible and
    independent of how the pool is split into files, batches or shards."""
    with np.errstate(over="ignore"):
        base = _mix(np.full(len(keys), np.uint64(seed % 2**64)) + _GOLDEN)
        if np.issubdtype(keys.dtype, np.integer):
            h = _mix(base ^ keys.astype(np.int64).view(np.uint64))
        else:
            keys = np.asarray(keys, dtype=str)
            codes = keys.view(np.uint32).reshape(len(keys), -1) if keys.size else np.zeros((0, 0), np.uint32)
            h = base
            for j in range(codes.shape[1]):  # numpy pads shorter strings with 0, which never occurs inside one
                c = codes[:, j].astype(np.uint64)
                h = np.where(c != 0, _mix((h ^ c) + _GOLDEN), h)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def random_strategy(pool, n: int, ctx: SelectContext):
    """Uniform random sample of the eligible pool: the ``n`` highest seeded hash keys (score = the key)."""
    return stream_top(pool, n, ctx, lambda keys, batch: random_keys(keys, ctx.seed), prob_cols=(),
                      description="random sample")


# ------------------------------------------------------------------------------------ uncertainty
def uncertainty_strategy(kind: str):
    """Eq. 8/9/10 strategy: most uncertain first under ``kind`` (least_confident, margin, entropy)."""
    score, sign = S.UNCERTAINTY[kind], S.UNCERTAINTY_SIGN[kind]

    def run(pool, n: int, ctx: SelectContext):
        ids, pri = stream_top(pool, n, ctx, lambda keys, batch: sign * score(batch_probs(batch, ctx.columns.probs)),
                              prob_cols=[ctx.columns.probs], description=f"{kind} scores")
        return ids, sign * pri

    run.__name__ = f"{kind}_strategy"
    run.__doc__ = f"Most uncertain eligible items by {kind} ({score.__doc__.split(':')[0]})."
    return run


# ------------------------------------------------------------------------------------- committees
QBC_MEASURES = {"vote_entropy": S.vote_entropy, "kl": S.kl_to_consensus}


def committee_columns(pool, ctx: SelectContext, strategy: str = "qbc") -> list[str]:
    """The members' probability columns: option ``committee_cols`` (a list or "a,b,c"), else the pool's
    ``probs_m0, probs_m1, …`` (:meth:`broaden.io.Columns.committee_in`; what ``broaden score --mc-dropout N``
    writes)."""
    cols = ctx.options.get("committee_cols")
    if isinstance(cols, str):
        cols = [c.strip() for c in cols.split(",") if c.strip()]
    given = bool(cols)
    if not given:
        cols = ctx.columns.committee_in(Pool.of(pool, ctx.columns).names)
    if len(cols) < 2:
        found = f"; got {', '.join(map(repr, cols))}" if given else f"; the pool has {len(cols)}"
        raise SelectionError(
            f"strategy {strategy!r} needs 2 or more committee probability columns: pass committee_cols= (the "
            f"members' columns, e.g. probs_a,probs_b) or score the pool with `broaden score --mc-dropout N` "
            f"({ctx.columns.probs}_m0, {ctx.columns.probs}_m1, …){found}"
        )
    return list(cols)


def committee_strategy(name: str, measure: Callable[[list[np.ndarray]], np.ndarray], description: str):
    """Most disputed first by ``measure(members)`` over the committee columns (:func:`committee_columns`)."""

    def run(pool, n: int, ctx: SelectContext):
        cols = committee_columns(pool, ctx, name)

        def priority(keys, batch):
            members = [batch_probs(batch, c) for c in cols]
            if len({m.shape[1] for m in members}) > 1:
                widths = ", ".join(f"{c!r}: {m.shape[1]}" for c, m in zip(cols, members))
                raise SelectionError(f"{name} committee columns must have the same number of classes; got {widths}")
            return measure(members)

        return stream_top(pool, n, ctx, priority, prob_cols=cols, description=description)

    return run


def qbc_strategy(pool, n: int, ctx: SelectContext):
    """Query by committee: most disputed first, by vote entropy (default) or mean KL to the consensus
    (option ``qbc_measure="kl"``) over the committee members' probability columns."""
    measure = ctx.options.get("qbc_measure") or "vote_entropy"
    if measure not in QBC_MEASURES:
        raise SelectionError(f"unknown qbc measure {measure!r}; choose one of {', '.join(QBC_MEASURES)}")
    return committee_strategy("qbc", QBC_MEASURES[measure], f"qbc {measure}")(pool, n, ctx)


#: BALD (Houlsby et al. 2011; Gal et al. 2017) over MC-dropout passes or any committee: highest mutual
#: information between label and model first (:func:`broaden.select.scores.bald`).
bald_strategy = committee_strategy("bald", S.bald, "bald")
bald_strategy.__name__ = "bald_strategy"


register_strategy("random", random_strategy, options=())
for _kind in S.UNCERTAINTY:
    register_strategy(_kind, uncertainty_strategy(_kind), options=())
register_strategy("qbc", qbc_strategy, options=("committee_cols", "qbc_measure"))
register_strategy("bald", bald_strategy, options=("committee_cols",))
