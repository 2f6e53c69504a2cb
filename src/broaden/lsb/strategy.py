"""``lsb`` and ``lsb-lt`` as ``broaden select`` strategies (DESIGN.md §5), so one call can mix
statistical AL and LSB within one budget, e.g. ``--strategy entropy:0.8,lsb-lt:0.2``. This is the only
place LSB candidates are ranked and cut to a share: ``broaden select``, ``round start`` and ``broaden
simulate`` all come through here.

- ``lsb``: the kNN candidates of the labelled set's bad cases.
- ``lsb-lt``: only candidates the Lookalike Threshold keeps (P(z=1|h) > τ2, default 0.5 — the paper's
  search-ads value; τ2 = 0 keeps every neighbour and only ranks them).

Rank policies (option ``rank_by``), ties always by id (:func:`broaden.topk.rank_order`):

- ``similarity`` (default of ``lsb``): most similar to its seed first; score = similarity.
- ``lookalike`` (default of ``lsb-lt``): highest P(z=1|h) first — the model's estimate that the item is
  itself a bad case — then similarity; score = lookalike probability.
- ``nearest``: every seed's 1st neighbour, then every 2nd, … (similarity breaks ties), so one dense
  region cannot eat the share; score = similarity.

Other options (keyword arguments of ``broaden.select.select``) go to :func:`broaden.lsb.lsb`: ``max_seeds``,
``seed_threshold``, ``k``, ``lookalike_threshold``, ``index``, ``metric``, ``discrepancy``,
``per_class_cap``, ``denoise``, ``target_recall``, ``memory_gb``, ``index_dir``, ``save_index``,
``case_study``. Without ``k``, each seed contributes enough neighbours for the strategy's share:
k = max(10, ⌈2n / number of seeds⌉), counting the seeds the labelled set actually yields. ``fill=True``
doubles k until the share is filled with candidates that pass τ2 (or the pool is exhausted), instead of
passing the shortfall on to the other strategies of the mix.

The :class:`broaden.lsb.LSBResult` of the run (seeds, LT model and its held-out scores, case study, stats)
is the strategy's report (``select(..., return_details=True)``). When the labelled set has too few bad
cases to fit the Lookalike Threshold, ``lsb-lt`` returns no candidates and reports the
:class:`LookalikeError`; the mix passes its share on (module docstring of :mod:`broaden.select.mix`).
"""
from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pyarrow as pa

from broaden.io import id_keys
from broaden.lsb.pipeline import LSBResult, lsb
from broaden.lsb.lookalike import LookalikeError
from broaden.lsb.seeds import load_labeled, select_seeds
from broaden.errors import SelectionError
from broaden.io.pool import Pool
from broaden.select.registry import SelectContext, register_strategy
from broaden.topk import rank_order

LSB_OPTIONS = ("max_seeds", "seed_threshold", "k", "lookalike_threshold", "index", "metric", "discrepancy",
               "per_class_cap", "denoise", "target_recall", "memory_gb", "index_dir", "save_index", "case_study")
DEFAULT_LOOKALIKE_THRESHOLD = 0.5
PROVENANCE = ("seed_id", "seed_ids", "neighbor_rank", "similarity", "lookalike_score")
RANK_BY = ("similarity", "lookalike", "nearest")
DEFAULT_RANK_BY = {"lsb": "similarity", "lsb-lt": "lookalike"}


def rank_candidates(candidates: pa.Table, rank_by: str, id_col: str = "id") -> tuple[np.ndarray, np.ndarray]:
    """(order, score): the candidates of :func:`broaden.lsb.lsb` best-first under one rank policy."""
    if rank_by not in RANK_BY:
        raise SelectionError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    ids = id_keys(candidates.column(id_col))
    sim = candidates.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    if rank_by == "lookalike":
        lt = candidates.column("lookalike_score").to_numpy(zero_copy_only=False).astype(np.float64)
        lt = np.nan_to_num(lt, nan=-1.0)  # no LT score (plain lsb): similarity alone decides
        return rank_order(lt, ids, sim), lt
    if rank_by == "nearest":
        rank = candidates.column("neighbor_rank").to_numpy(zero_copy_only=False).astype(np.float64)
        return rank_order(-rank, ids, sim), sim
    return rank_order(sim, ids), sim


def _lsb_options(ctx: SelectContext) -> dict:
    options = dict(ctx.options)
    if "seeds" in options:  # the glossary's old name (docs/architecture.md)
        warnings.warn("the select option seeds= is deprecated, use max_seeds=", DeprecationWarning, stacklevel=4)
        options.setdefault("max_seeds", options.pop("seeds"))
    return {k: v for k, v in options.items() if k in LSB_OPTIONS and v is not None}


def _initial_k(labeled, n: int, opts: dict, ctx: SelectContext):
    """k sized by the seeds there really are (a cap of 1000 with only 50 bad cases needs 20× more depth),
    and the labelled table validated once so :func:`lsb` need not read it again."""
    defaults = {p.name: p.default for p in inspect.signature(lsb).parameters.values()}
    view = load_labeled(labeled, discrepancy=opts.get("discrepancy", defaults["discrepancy"]), columns=ctx.columns,
                        require_embedding=True)
    seeds = select_seeds(view, seed_threshold=opts.get("seed_threshold", defaults["seed_threshold"]),
                         max_seeds=opts.get("max_seeds", defaults["max_seeds"]), per_class_cap=opts.get("per_class_cap"),
                         denoise=bool(opts.get("denoise", defaults["denoise"])))
    return max(10, math.ceil(2 * n / max(1, len(seeds)))), view.table


def _broaden(pool, n: int, ctx: SelectContext, *, filtered: bool) -> LSBResult:
    """Run :func:`lsb` once, or (``fill``) with k doubled until ``n`` candidates pass τ2."""
    opts = _lsb_options(ctx)
    fill = bool(ctx.options.get("fill", False))
    labeled = ctx.labeled
    if "k" not in opts:
        opts["k"], labeled = _initial_k(labeled, n, opts, ctx)
    if filtered:
        opts.setdefault("lookalike_threshold", DEFAULT_LOOKALIKE_THRESHOLD)
    else:
        opts.pop("lookalike_threshold", None)
    opts.setdefault("show_progress", bool(ctx.options.get("show_progress", True)))
    kwargs = dict(exclude=ctx.exclude, columns=ctx.columns, seed=ctx.seed, engine=ctx.engine)
    result = lsb(labeled, pool, **opts, **kwargs)
    if not fill:
        return result
    cap = Pool.of(pool, ctx.columns).num_rows
    first = result
    while result.candidates.num_rows < n and opts["k"] < cap and result.stats.get("seeds"):
        # The LT model is fitted once: a wider search must not refit it on another random hold-out.
        opts.update(k=min(cap, 2 * opts["k"]), lookalike=result.lookalike)
        result = lsb(labeled, pool, **opts, **kwargs)
    result.heldout = first.heldout
    result.stats["lookalike_auc"] = first.stats.get("lookalike_auc")
    result.stats["k_filled"] = opts["k"]
    return result


def _ranked(pool, n: int, ctx: SelectContext, *, name: str) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    filtered = name == "lsb-lt"
    try:
        result = _broaden(pool, n, ctx, filtered=filtered)
    except LookalikeError as exc:
        ctx.reports[name] = exc
        return np.empty(0, dtype=np.int64), np.empty(0), pa.table({})
    ctx.reports[name] = result
    rank_by = ctx.options.get("rank_by") or DEFAULT_RANK_BY[name]
    cand = result.candidates
    order, score = rank_candidates(cand, rank_by, ctx.columns.id)
    order = order[:n]
    details = cand.select([c for c in PROVENANCE if c in cand.column_names]).take(pa.array(order, pa.int64()))
    return id_keys(cand.column(ctx.columns.id))[order], score[order], details


def lsb_strategy(pool, n: int, ctx: SelectContext) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """LSB candidates ranked by ``rank_by`` (default: similarity to their seed)."""
    return _ranked(pool, n, ctx, name="lsb")


def lsb_lt_strategy(pool, n: int, ctx: SelectContext) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """LT-filtered LSB candidates ranked by ``rank_by`` (default: P(z=1|h), the lookalike probability)."""
    return _ranked(pool, n, ctx, name="lsb-lt")


OPTIONS = (*LSB_OPTIONS, "fill", "rank_by", "seeds")  # seeds: deprecated name of max_seeds
register_strategy("lsb", lsb_strategy, needs_labeled=True, options=OPTIONS)
register_strategy("lsb-lt", lsb_lt_strategy, needs_labeled=True, options=OPTIONS)
