"""``select``: fill a labelling budget from one strategy or a mix of them (DESIGN.md §5 ``broaden select``).

Mix semantics (``"entropy:0.6,margin:0.2,random:0.2"`` or ``{"entropy": 0.6, ...}``):

* Shares are fractions of the budget summing to 1 (a single name means the whole budget; names without
  shares split it equally). Slot counts are rounded by largest remainder, so they sum exactly to the
  budget; remainders tie in spec order.
* Strategies run in spec order. Each one skips ``exclude`` and every id an earlier strategy chose, so an
  item counts once, under the first strategy that chose it, and the slot goes to the next best item of
  the later strategy.
* A strategy that runs out of eligible items (e.g. ``lsb`` finding fewer neighbours than its share)
  passes its shortfall to the strategies after it, in order; what is still missing after the last one
  goes back to the earlier strategies that did not run out, in spec order. If every strategy runs out
  before the budget is filled, that is an error naming the shortfall.
* Pool rows that already carry a label (a non-null, non-negative value in the label column) are
  excluded like ``exclude``: their label is known, so selecting them would waste budget.
* Relabelling: the pool rows named in the ``annotations`` option (votes: ``id``, ``annotator``, ``label``)
  may be picked again by a strategy that relabels (``activelab``) though their label column is filled;
  every other strategy of the mix skips them; ``exclude`` holds for all. Such picks have ``relabel`` = true.
* ``auto`` stands for the mix the measurements call for (:mod:`broaden.auto.strategy`): Stat-AL and, with a
  labelled set, LSB-LT in shares set by the error-clustering diagnostic and each strategy's measured value.
* A budget larger than the eligible pool (rows minus excluded ids) is an error that says so.

The output has ``id``, ``strategy``, ``score``, ``rank`` (1 = the strategy's best pick), the provenance
columns a strategy reports (LSB: ``seed_id``, ``seed_ids``, ``neighbor_rank``, ``similarity``,
``lookalike_score``; null on rows of strategies that have none) and every other pool column; a pool column
whose name is taken is kept as ``pool_<name>``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from broaden._typing import IdsLike, LabeledLike, PoolLike
from broaden.engines import engine_scope
from broaden.errors import SelectionError
from broaden.io.ids import IdSet, as_ids
from broaden.io.inputs import as_scored
from broaden.io.pool import Pool
from broaden.io.table import BATCH_SIZE, DEFAULT_COLUMNS, Columns, check_writable, id_keys, write_table
from broaden.select.activelab import read_annotations
from broaden.select.registry import SelectContext, check_labeled, check_options, get_mix, get_strategy

def parse_spec(spec: str | Mapping[str, float]) -> list[tuple[str, float]]:
    """``"entropy:0.6,margin:0.4"`` (or a dict) → [(name, share), …] with shares summing to 1."""
    if isinstance(spec, Mapping):
        items = [(str(k).strip(), v) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            name, _, share = part.partition(":")
            items.append((name.strip(), share.strip() or None))
    if not items or any(not name for name, _ in items):
        raise SelectionError(f"empty strategy name in {spec!r}; expected e.g. 'entropy' or 'entropy:0.8,random:0.2'")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise SelectionError(f"strategy listed twice in {spec!r}")
    given = [s for _, s in items if s is not None]
    if not given:
        return [(n, 1.0 / len(items)) for n in names]
    if len(given) != len(items):
        raise SelectionError(f"give a share to every strategy in {spec!r} (or to none, for equal shares)")
    try:
        shares = [float(s) for _, s in items]
    except ValueError as exc:
        raise SelectionError(f"bad share in {spec!r}: {exc}") from exc
    if any(not math.isfinite(s) or s < 0 for s in shares):
        raise SelectionError(f"shares must be finite and >= 0 in {spec!r}")
    total = sum(shares)
    if abs(total - 1.0) > 1e-6:
        raise SelectionError(f"shares in {spec!r} sum to {total:g}; they are fractions of the budget and must sum to 1")
    return list(zip(names, shares))


def largest_remainder(total: int, weights) -> np.ndarray:
    """Integer counts proportional to ``weights`` that sum exactly to ``total`` (Hamilton's method;
    remainder ties go to the earlier entry)."""
    w = np.asarray(weights, dtype=np.float64)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(len(w), dtype=np.int64)
    exact = total * w / w.sum()
    counts = np.floor(exact + 1e-9).astype(np.int64)
    left = total - int(counts.sum())
    if left > 0:
        order = np.lexsort((np.arange(len(w)), -(exact - counts)))
        counts[order[:left]] += 1
    return counts


def select(
    pool: PoolLike,
    strategy: str | Mapping[str, float],
    budget: int,
    *,
    exclude: IdsLike = None,
    seed: int = 0,
    labeled: LabeledLike | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    out: str | os.PathLike | None = None,
    batch_size: int = BATCH_SIZE,
    engine=None,
    return_details: bool = False,
    **options,
) -> pa.Table | tuple[pa.Table, dict]:
    """Choose ``budget`` pool items to label next with a strategy or a mix (see module docstring).

    ``pool`` and ``labeled`` are paths (streamed), Arrow tables, pandas/polars DataFrames, Hugging Face
    datasets or dicts of arrays (:func:`broaden.io.inputs.as_scored`). ``exclude`` is ids (any iterable, a
    DataFrame's id column) or a file of ids (txt, one per line; Parquet/CSV with an id column)
    (:func:`broaden.io.ids.as_ids`). ``options`` go to every strategy (e.g. ``committee_cols=[...]``
    for qbc). Writes ``out`` atomically when given. ``engine`` (a :class:`broaden.engines.Engine` or "local"/"ray") runs the
    pool scans; every engine returns the same selection. ``return_details=True`` returns ``(table,
    reports)``: what each strategy reported about its run, by name (``lsb``/``lsb-lt``: the
    :class:`broaden.lsb.LSBResult`, or the error that left it without candidates).
    """
    pool = as_scored(pool, columns=columns, what="pool")
    if labeled is not None:
        labeled = as_scored(labeled, columns=columns, what="labeled")
    with engine_scope(engine) as resolved:
        table, reports = _select(pool, strategy, budget, exclude=exclude, seed=seed, labeled=labeled,
                                 columns=columns, out=out, batch_size=batch_size, engine=resolved, options=options)
    return (table, reports) if return_details else table


def _select(pool, strategy, budget: int, *, exclude, seed: int, labeled, columns: Columns, out, batch_size: int,
            engine, options: dict) -> tuple[pa.Table, dict]:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise SelectionError(f"budget must be a positive integer, got {budget!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SelectionError(f"batch size must be a positive integer, got {batch_size!r}")
    if out is not None:
        check_writable(out)  # a bad --out fails now, not after the pool scans
    check_options(options)
    mix_report = None
    resolve = get_mix(strategy.strip()) if isinstance(strategy, str) else None
    if resolve is not None:  # a name standing for a mix (``auto``), resolved from the run's data
        mix_name = strategy.strip()
        strategy, mix_report = resolve(labeled, options, columns=columns, seed=seed)
    plan = parse_spec(strategy)
    strategies = [get_strategy(name) for name, _ in plan]
    user_exclude = as_ids(exclude, id_col=columns.id)
    source = Pool.of(pool, columns)
    known = source.labelled_ids(batch_size)
    # Items offered for relabelling: only a relabelling strategy may pick them, labelled as they may be.
    relabeling = any(s.relabels for s in strategies) and options.get("annotations") is not None
    options = dict(options)
    if relabeling:  # read once: the relabelling strategy gets the parsed votes, not the file again
        options["annotations"] = read_annotations(options["annotations"])
    annotated = IdSet(id_keys(options["annotations"].column("id"))) if relabeling else IdSet()
    relabel_exclude = user_exclude.union(IdSet(known).difference(annotated))
    if len(known):
        user_exclude = user_exclude.union(known)
    ctx = SelectContext(columns=columns, exclude=user_exclude, seed=seed, labeled=labeled,
                        options=options, batch_size=batch_size, engine=engine)
    if mix_report is not None:
        ctx.reports[mix_name] = mix_report
    for s in strategies:
        check_labeled(s, ctx)

    total = source.num_rows
    excluded = source.count_present(relabel_exclude if relabeling else user_exclude, batch_size)
    eligible = total - excluded
    if budget > eligible:
        raise SelectionError(
            f"budget {budget} is larger than the eligible pool: {total} rows"
            + (f", {excluded} of them excluded" if excluded else "") + f", {eligible} eligible"
        )

    quotas = largest_remainder(budget, [share for _, share in plan])
    picked = IdSet()
    picks: list[tuple[str, np.ndarray, np.ndarray, pa.Table | None]] = []
    exhausted = [False] * len(plan)
    carry = 0

    def run(i: int, want: int) -> int:
        s = strategies[i]
        ctx.exclude = (relabel_exclude if s.relabels else user_exclude.union(annotated)).union(picked)
        ids, scores, *rest = s.fn(pool, want, ctx)
        details = rest[0] if rest else None  # optional provenance, one row per returned id
        ids, scores = np.asarray(ids), np.asarray(scores, dtype=np.float64)
        # Guard against a plugin returning excluded or repeated ids: an item counts once.
        fresh = ~ctx.exclude.contains(ids) if len(ids) else np.zeros(0, bool)
        _, first = np.unique(ids, return_index=True)
        fresh &= np.isin(np.arange(len(ids)), first)
        ids, scores = ids[fresh][:want], scores[fresh][:want]
        if details is not None:
            details = details.filter(pa.array(fresh)).slice(0, len(ids))
        picked.add(ids)
        if len(ids):
            picks.append((s.name, ids, scores, details))
        if len(ids) < want:
            exhausted[i] = True
        return want - len(ids)

    for i, q in enumerate(quotas):
        want = int(q) + carry
        carry = run(i, want) if want else 0
    for i in range(len(plan)):
        if carry and not exhausted[i]:
            carry = run(i, carry)
    if carry:
        raise SelectionError(
            f"strategies {', '.join(n for n, _ in plan)} found only {budget - carry} eligible items for a "
            f"budget of {budget}; add a fallback such as ',entropy:0.1' to the mix or lower the budget"
        )
    order = {name: i for i, (name, _) in enumerate(plan)}
    picks.sort(key=lambda p: order[p[0]])  # stable: a refill follows its strategy's first picks
    table = _assemble(source, picks, batch_size)
    if out is not None:
        write_table(table, out)
    return table, ctx.reports


def _provenance(picks) -> dict[str, pa.ChunkedArray]:
    """The strategies' provenance columns over all picks, null where a strategy reported none."""
    types: dict[str, pa.DataType] = {}
    for *_, details in picks:
        for field in details.schema if details is not None else ():
            types.setdefault(field.name, field.type)
    out = {}
    for name, typ in types.items():
        chunks = [details.column(name).cast(typ) if details is not None and name in details.column_names
                  else pa.nulls(len(ids), typ) for _, ids, _, details in picks]
        out[name] = pa.chunked_array(chunks, typ).combine_chunks()
    return out


def _assemble(pool: Pool, picks, batch_size: int) -> pa.Table:
    names, ranks, all_ids, all_scores = [], [], [], []
    for name, ids, scores, _ in picks:
        # Several calls for one strategy (shortfall refill) continue its rank numbering.
        start = sum(len(r) for n, r in zip(names, ranks) if n == name)
        names.append(name)
        ranks.append(np.arange(start + 1, start + len(ids) + 1, dtype=np.int64))
        all_ids.append(ids)
        all_scores.append(scores)
    ids = np.concatenate(all_ids)
    columns = pool.columns
    rows = pool.fetch_rows(ids, batch_size)
    labels = np.concatenate([np.full(len(r), n, dtype=object) for n, r in zip(names, ranks)])
    front = {
        columns.id: rows.column(columns.id),
        "strategy": pa.array(labels.tolist(), type=pa.string()),
        "score": pa.array(np.concatenate(all_scores)),
        "rank": pa.array(np.concatenate(ranks)),
        **_provenance(picks),
    }
    arrays, fields = [], []
    for name, arr in front.items():
        fields.append(pa.field(name, arr.type))
        arrays.append(arr)
    for field in rows.schema:
        if field.name == columns.id:
            continue
        name = f"pool_{field.name}" if field.name in front else field.name
        fields.append(field.with_name(name))
        arrays.append(rows.column(field.name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=rows.schema.metadata))
