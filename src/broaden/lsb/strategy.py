"""``lsb`` and ``lsb-lt`` as ``broaden select`` strategies (DESIGN.md §5), so one call can mix
statistical AL and LSB within one budget, e.g. ``--strategy entropy:0.8,lsb-lt:0.2``.

- ``lsb``: the kNN candidates of the labelled set's bad cases, ranked by similarity to their seed.
- ``lsb-lt``: only candidates the Lookalike Threshold keeps (P(z=1|h) > τ2, default 0.5 — the paper's
  search-ads value), ranked by that probability: the model's estimate that the item is itself a bad
  case, which is what a labelling budget should buy first (ties by similarity, then id).

Options (``ctx.options``, i.e. keyword arguments of ``broaden.select.select``) are passed to
:func:`broaden.lsb.lsb`: ``seeds``, ``seed_threshold``, ``k``, ``lookalike_threshold``, ``index``,
``metric``, ``discrepancy``, ``per_class_cap``, ``denoise``, ``target_recall``, ``memory_gb``,
``index_dir``. Without ``k``, each seed contributes enough neighbours for the strategy's share:
k = max(10, ⌈2n / number of seeds⌉), counting the seeds the labelled set actually yields.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pyarrow as pa

from broaden.io import id_keys
from broaden.lsb.broaden import lsb
from broaden.lsb.seeds import load_labeled, select_seeds
from broaden.select.registry import SelectContext, register_strategy

LSB_OPTIONS = ("seeds", "seed_threshold", "k", "lookalike_threshold", "index", "metric", "discrepancy",
               "per_class_cap", "denoise", "target_recall", "memory_gb", "index_dir")
DEFAULT_LOOKALIKE_THRESHOLD = 0.5
PROVENANCE = ("seed_id", "seed_ids", "neighbor_rank", "similarity", "lookalike_score")


def _ranked(pool, n: int, ctx: SelectContext, *, filtered: bool) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    opts = {k: v for k, v in ctx.options.items() if k in LSB_OPTIONS and v is not None}
    labeled = ctx.labeled
    if "k" not in opts:
        # Size k by the seeds there really are: a cap of 1000 with only 50 bad cases needs 20× more depth.
        defaults = {p.name: p.default for p in inspect.signature(lsb).parameters.values()}
        view = load_labeled(labeled, kind=opts.get("discrepancy", defaults["discrepancy"]), columns=ctx.columns,
                            require_embedding=True)
        seeds = select_seeds(view, threshold=opts.get("seed_threshold", defaults["seed_threshold"]),
                             max_seeds=opts.get("seeds", defaults["seeds"]), per_class_cap=opts.get("per_class_cap"),
                             denoise=bool(opts.get("denoise", defaults["denoise"])))
        opts["k"] = max(10, math.ceil(2 * n / max(1, len(seeds))))
        labeled = view.table  # validated and read once
    if filtered:
        opts.setdefault("lookalike_threshold", DEFAULT_LOOKALIKE_THRESHOLD)
    else:
        opts.pop("lookalike_threshold", None)
    result = lsb(labeled, pool, exclude=ctx.exclude, columns=ctx.columns, seed=ctx.seed, engine=ctx.engine,
                 **opts)
    cand = result.candidates
    ids = id_keys(cand.column(ctx.columns.id))
    sim = cand.column("similarity").to_numpy(zero_copy_only=False).astype(np.float64)
    if filtered:
        score = cand.column("lookalike_score").to_numpy(zero_copy_only=False).astype(np.float64)
        order = np.lexsort((ids, -sim, -score))
    else:
        score, order = sim, np.lexsort((ids, -sim))
    order = order[:n]
    details = cand.select([c for c in PROVENANCE if c in cand.column_names]).take(pa.array(order))
    return ids[order], score[order], details


def lsb_strategy(pool, n: int, ctx: SelectContext) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """LSB candidates ranked by similarity to their seed (score = similarity)."""
    return _ranked(pool, n, ctx, filtered=False)


def lsb_lt_strategy(pool, n: int, ctx: SelectContext) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """LT-filtered LSB candidates ranked by P(z=1|h) (score = lookalike probability)."""
    return _ranked(pool, n, ctx, filtered=True)


register_strategy("lsb", lsb_strategy, needs_labeled=True)
register_strategy("lsb-lt", lsb_lt_strategy, needs_labeled=True)
