"""Seed provenance of LSB picks (seed id, neighbour rank, similarity, lookalike score) for the ledger and
the annotator files, so a reviewer sees why an item was sent.

``broaden.select.select`` returns id / strategy / score / rank only, so the provenance is recovered by
running :func:`broaden.lsb.lsb` again with the inputs the ``lsb`` / ``lsb-lt`` strategy saw (same labelled
set, options, seed and exclusions: the round's blocked ids plus the picks of strategies earlier in the
mix). LSB is deterministic for fixed inputs, so it reaches the same candidates; an item it does not
reach again (possible only after a shortfall refill) keeps null provenance rather than a guessed one.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from broaden.io import Columns
from broaden.rounds.workspace import key_strings

LSB_STRATEGIES = ("lsb", "lsb-lt")
COLUMNS = (("seed_id", pa.string()), ("seed_ids", pa.list_(pa.string())), ("neighbor_rank", pa.int32()),
           ("similarity", pa.float32()), ("lookalike_score", pa.float64()))


def uses_lsb(spec) -> bool:
    from broaden.select import parse_spec

    return any(name in LSB_STRATEGIES for name, _ in parse_spec(spec))


def add_lsb_provenance(batch: pa.Table, *, pool, spec, budget: int, labeled, blocked: set[str], seed: int,
                       columns: Columns, options: dict) -> pa.Table:
    """``batch`` with the provenance columns filled for LSB rows (null elsewhere); unchanged when the
    selector already provided them or the mix has no LSB strategy."""
    if "seed_id" in batch.column_names or not uses_lsb(spec):
        return batch
    from broaden.lsb import lsb
    from broaden.lsb.strategy import DEFAULT_LOOKALIKE_THRESHOLD, LSB_OPTIONS
    from broaden.select import largest_remainder, parse_spec

    plan = parse_spec(spec)
    quotas = largest_remainder(budget, [share for _, share in plan])
    keys = key_strings(batch.column(columns.id))
    strategy = batch.column("strategy").to_pylist()
    found: dict[str, dict] = {}
    for i, (name, _) in enumerate(plan):
        if name not in LSB_STRATEGIES or name not in strategy:
            continue
        earlier = {k for k, s in zip(keys, strategy) if s in {n for n, _ in plan[:i]}}
        # Mirror the strategy's option handling exactly (broaden.lsb.strategy._ranked).
        opts = {k: v for k, v in options.items() if k in LSB_OPTIONS and v is not None}
        if "k" not in opts:
            opts["k"] = max(10, math.ceil(2 * int(quotas[i]) / max(1, opts.get("seeds") or 1000)))
        if name == "lsb-lt":
            opts.setdefault("lookalike_threshold", DEFAULT_LOOKALIKE_THRESHOLD)
        else:
            opts.pop("lookalike_threshold", None)
        result = lsb(labeled, pool, exclude=sorted(blocked | earlier), columns=columns, seed=seed,
                     show_progress=False, **opts)
        cand = result.candidates.select([columns.id, *(c for c, _ in COLUMNS)])
        mine = {k for k, s in zip(keys, strategy) if s == name}
        for key, row in zip(key_strings(cand.column(columns.id)), cand.to_pylist()):
            if key in mine:
                found[key] = row
    for name, typ in COLUMNS:
        values = [found.get(k, {}).get(name) for k in keys]
        if name in ("seed_id",):
            values = [None if v is None else str(v) for v in values]
        elif name == "seed_ids":
            values = [None if v is None else [str(s) for s in v] for v in values]
        elif name in ("similarity", "lookalike_score"):
            values = [None if v is None or not np.isfinite(v) else float(v) for v in values]
        batch = batch.append_column(pa.field(name, typ), pa.array(values, typ))
    return batch
