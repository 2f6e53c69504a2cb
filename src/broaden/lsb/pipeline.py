"""Latent Space Broadening end to end (paper §3.1, Algorithm 1; DESIGN.md §3): ``lsb()``.

seeds (d > τ1) → each seed's own k nearest eligible pool items (never one search with an averaged
query) → union, deduplicated with provenance → optional Lookalike Threshold filter P(z=1|h) > τ2.

Similarities in the output are recomputed exactly from the stored embeddings, whatever index found the
neighbours, and each seed's list is re-ranked by them. An item reached from several seeds keeps its best
similarity (ties: better rank, then the seed with the larger discrepancy) and lists every seed that
reached it in ``seed_ids`` (most similar first). Candidates are ordered by similarity, then id.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from broaden._lazy import renamed
from broaden._typing import IdsLike, LabeledLike, PoolLike
from broaden.engines import engine_scope
from broaden.errors import ScoredTableError
from broaden.io import as_scored
from broaden.io import DEFAULT_COLUMNS, Columns, check_same_classes, id_keys, list_matrix
from broaden.lsb.lookalike import LookalikeError, LookalikeModel
from broaden.lsb.seeds import load_labeled, seeds_table, select_seeds
from broaden.errors import KNNError
from broaden.io.ids import IdSet, as_ids
from broaden.io.pool import Pool
from broaden.lsb.knn.backends import faiss_metric, prepare
from broaden.lsb.knn.build import build_index

PROVENANCE = ("seed_id", "neighbor_rank", "similarity", "lookalike_score", "seed_ids")


@dataclass
class LSBResult:
    """What one LSB run produced; ``candidates`` is the table ``broaden lsb --out`` writes."""

    candidates: pa.Table
    seeds: pa.Table
    lookalike: LookalikeModel | None
    index_info: dict
    case_study: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    #: The LT model's held-out labelled items (``id``, ``z``, ``lookalike_score``): what its AUC was measured
    #: on, for plots and reports that must not reload the labelled set. None when LT did not run here.
    heldout: pa.Table | None = None


@renamed(seeds="max_seeds")
def lsb(
    labeled: LabeledLike,
    pool: PoolLike,
    *,
    max_seeds: int | None = 1000,
    seed_threshold: float = 0.5,
    k: int = 10,
    lookalike_threshold: float | None = None,
    index: str = "auto",
    exclude: IdsLike = None,
    metric: str = "cosine",
    discrepancy: str = "ordinal",
    per_class_cap: int | None = None,
    denoise: bool = False,
    embedding_col: str | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    target_recall: float = 0.95,
    memory_gb: float = 8.0,
    index_dir: str | os.PathLike | None = None,
    save_index: bool = True,
    index_params: dict | None = None,
    lookalike: LookalikeModel | str | os.PathLike | None = None,
    lookalike_holdout: float = 0.2,
    case_study: int = 0,
    logits: bool = False,
    seed: int = 0,
    show_progress: bool = True,
    engine=None,
) -> LSBResult:
    """Broaden the labelled set's bad cases into the pool (see the module docstring).

    ``labeled`` and ``pool`` are scored tables: a Parquet path (the pool is streamed), an Arrow table, a
    pandas/polars DataFrame, a Hugging Face dataset or a dict of arrays (:func:`broaden.io.inputs.as_scored`);
    ``exclude`` takes what :func:`broaden.io.ids.as_ids` takes. ``max_seeds`` caps the seed
    count (τ1 = ``seed_threshold``), ``k`` neighbours per seed. Items already labelled or in ``exclude``
    are never returned. The Lookalike Threshold runs when ``lookalike_threshold`` (τ2) is given or a
    fitted/saved ``lookalike`` model is passed. ``embedding_col`` picks the latent used for kNN and LT.
    ``case_study`` = N fills ``result.case_study`` with N seeds next to their neighbours (paper Table 3).
    ``engine`` ("local", "ray" or a :class:`broaden.engines.Engine`) builds and searches the kNN index;
    with an exact index every engine returns the same candidates.
    """
    if k < 1:
        raise KNNError(f"k (neighbours per seed) must be >= 1, got {k}")
    faiss_metric(metric)  # a bad metric fails before the labelled set is read and the LT model fitted
    if lookalike_threshold is not None and not 0 <= lookalike_threshold <= 1:  # NaN fails too
        raise LookalikeError(f"lookalike_threshold (τ2) is a probability and must be "
                             f"within 0 … 1, got {lookalike_threshold}")
    cols = replace(columns, embedding=embedding_col) if embedding_col else columns
    labeled = as_scored(labeled, columns=cols, what="labeled")
    view = load_labeled(labeled, discrepancy=discrepancy, columns=cols, require_embedding=True, logits=logits)
    seed_rows = select_seeds(view, seed_threshold=seed_threshold, max_seeds=max_seeds, per_class_cap=per_class_cap,
                             denoise=denoise)
    seeds_t = seeds_table(view, seed_rows, cols)
    labeled_emb = view.embeddings(cols)
    source = Pool.of(pool, cols)
    if labeled_emb.shape[1] != source.dim:
        raise ScoredTableError(
            f"embedding dimension mismatch in column {cols.embedding!r}: the labelled table has "
            f"{labeled_emb.shape[1]} values per row, the pool ({source.name}) has {source.dim}"
        )
    check_same_classes(labeled, source.data, cols)
    # No seed has more neighbours than the pool has rows; an unbounded k would size each seed's result heap
    # (a k=10^8 request asked for 141 GiB).
    k = min(k, source.num_rows)
    queries = labeled_emb[seed_rows]
    excl = as_ids(exclude, id_col=cols.id).union(view.keys)  # the labelled items are never candidates

    # The LT model is fitted before the index exists and the index is dropped before the pool rows are
    # gathered, so the three big consumers of memory never coexist (a 10M pool's index is GBs).
    model = _lookalike(lookalike, lookalike_threshold, view, labeled_emb, seed_threshold, lookalike_holdout, seed)
    fitted_here = lookalike is None and model is not None
    heldout = _heldout(model, view, labeled_emb, seed_threshold, cols) if fitted_here else None
    del labeled_emb
    with engine_scope(engine) as runner:
        knn = _build_on(runner, source, index=index, metric=metric, columns=cols, queries=queries, k=k,
                        target_recall=target_recall, memory_gb=memory_gb, index_dir=index_dir,
                        save_index=save_index, index_params=index_params, seed=seed, show_progress=show_progress)
        positions = (knn.search(queries, k, exclude=excl, show_progress=show_progress).positions if len(queries)
                     else np.full((0, k), -1, dtype=np.int64))
        pool_ids, index_info = knn.ids, knn.info
        del knn
    union = np.unique(positions[positions >= 0])
    keys = id_keys(pool_ids.take(pa.array(union))) if union.size else np.empty(0, dtype=np.int64)
    del pool_ids
    rows = source.fetch_rows(keys) if union.size else source.schema.empty_table()
    emb = list_matrix(rows.column(cols.embedding)) if rows.num_rows else np.zeros((0, source.dim), np.float32)

    pairs = _ranked_pairs(positions, union, prepare(queries, metric), emb, metric, keys)
    lt_scores = model.score(emb) if model is not None else None
    del emb
    candidates = _candidates(_dedup(pairs), pairs, rows, keys, seeds_t.column(cols.id).combine_chunks(),
                             lt_scores, lookalike_threshold, cols)
    stats = {
        "labeled": len(view.labels), "bad_cases": int((view.d > seed_threshold).sum()), "seeds": len(seed_rows),
        "neighbor_pairs": int(len(pairs["seed"])), "unique_neighbors": int(union.size),
        "candidates": candidates.num_rows, "excluded_ids": len(excl),
        "lookalike_auc": None if model is None or np.isnan(model.auc_) else round(model.auc_, 4),
    }
    study = _case_study(case_study, seeds_t, pairs, rows, lt_scores, candidates, cols)
    return LSBResult(candidates, seeds_t, model, index_info, study, stats, heldout)


def _build_on(engine, pool: Pool, **kwargs):
    """The kNN structure over ``pool`` for ``engine``: sharded over Ray actors on the Ray engine (same
    backends, exact results equal), else built in this process."""
    if getattr(engine, "name", "local") == "ray":
        from broaden.lsb.knn.ray import build_sharded_index  # Ray is an optional extra

        return build_sharded_index(engine, pool, **kwargs)
    return build_index(pool, **kwargs)


def _ranked_pairs(positions, union, q, emb, metric, keys) -> dict:
    """Flat (seed, rank, similarity, row) arrays; each seed's list re-ranked by exact similarity.

    ``q`` is prepared (normalised for cosine), ``emb`` raw: it is prepared a chunk at a time so that a
    large candidate set is not held twice.
    """
    seed_idx, slot = np.nonzero(positions >= 0)
    row = np.searchsorted(union, positions[seed_idx, slot])
    sim = np.empty(len(row), dtype=np.float64)
    step = 65_536
    for s in range(0, len(row), step):
        a, b = q[seed_idx[s:s + step]], prepare(emb[row[s:s + step]], metric)
        sim[s:s + step] = (a * b).sum(axis=1) if metric == "cosine" else -np.sqrt(((a - b) ** 2).sum(axis=1))
    order = np.lexsort((keys[row] if len(row) else row, -sim, seed_idx))
    seed_idx, row, sim = seed_idx[order], row[order], sim[order]
    starts = np.searchsorted(seed_idx, seed_idx)  # first pair of the same seed
    rank = np.arange(len(seed_idx)) - starts + 1
    return {"seed": seed_idx, "rank": rank, "sim": sim, "row": row}


def _dedup(pairs: dict) -> dict:
    """One entry per pool row: the best pair, plus every seed that reached the row (most similar first)."""
    order = np.lexsort((pairs["seed"], pairs["rank"], -pairs["sim"], pairs["row"]))
    row = pairs["row"][order]
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    offsets = np.append(np.flatnonzero(first), len(row)).astype(np.int32)
    return {"pair": order[first], "order": order, "offsets": offsets}


def _lookalike(lookalike, threshold, view, labeled_emb, seed_threshold, holdout, seed) -> LookalikeModel | None:
    if isinstance(lookalike, LookalikeModel):
        return lookalike
    if lookalike is not None:
        return LookalikeModel.load(lookalike)
    if threshold is None:
        return None
    rows, z = view.lookalike_targets(seed_threshold)
    return LookalikeModel(holdout=holdout, seed=seed).fit(labeled_emb[rows], z)


def _heldout(model: LookalikeModel, view, labeled_emb, seed_threshold: float, cols: Columns) -> pa.Table | None:
    """The held-out rows of the LT model this run fitted on ``view``, with their LT scores."""
    rows, z = view.lookalike_targets(seed_threshold)
    held = rows[model.holdout_index_]
    return pa.table({cols.id: view.table.column(cols.id).take(pa.array(held, pa.int64())),
                     "z": pa.array(z[model.holdout_index_], pa.int64()),
                     "lookalike_score": pa.array(model.score(labeled_emb[held]), pa.float64())})


def _candidates(best, pairs, rows, keys, seed_ids, lt_scores, threshold, cols) -> pa.Table:
    """One row per kept item, best similarity first (ties by id); pool rows are taken once, in that order."""
    pick = best["pair"]
    row = pairs["row"][pick]
    lt = lt_scores[row] if lt_scores is not None else None
    order = np.lexsort((keys[row], -pairs["sim"][pick])) if len(row) else np.empty(0, dtype=np.int64)
    if lt is not None and threshold is not None:
        order = order[lt[order] > threshold]
    sel = pa.array(order, type=pa.int64())
    group_seeds = pa.ListArray.from_arrays(
        pa.array(best["offsets"]), seed_ids.take(pa.array(pairs["seed"][best["order"]], type=pa.int64())))
    taken = rows.take(pa.array(row[order], type=pa.int64()))
    table = pa.table({
        cols.id: taken.column(cols.id),
        "seed_id": seed_ids.take(pa.array(pairs["seed"][pick][order], type=pa.int64())),
        "neighbor_rank": pa.array(pairs["rank"][pick][order], pa.int32()),
        "similarity": pa.array(pairs["sim"][pick][order], pa.float32()),
        "lookalike_score": pa.array(lt[order], pa.float64()) if lt is not None else pa.nulls(len(order), pa.float64()),
        "seed_ids": group_seeds.take(sel),
    })
    for name in taken.schema.names:
        if name != cols.id and name not in PROVENANCE:
            table = table.append_column(taken.schema.field(name), taken.column(name))
    return table


def _jsonable(row: dict, cols: Columns) -> dict:
    return {k: v for k, v in row.items() if k != cols.embedding}


def _case_study(n, seeds_t, pairs, rows, lt_scores, candidates, cols) -> list[dict]:
    """The first ``n`` seeds, each with its fields and probability vector next to its neighbours'."""
    if n <= 0:
        return []
    kept = IdSet(id_keys(candidates.column(cols.id)))
    out = []
    for s in range(min(n, seeds_t.num_rows)):
        mine = np.flatnonzero(pairs["seed"] == s)
        neighbours = []
        for p in mine:
            r = int(pairs["row"][p])
            fields = _jsonable(rows.slice(r, 1).to_pylist()[0], cols)
            key = id_keys(rows.column(cols.id).slice(r, 1))
            neighbours.append({
                "neighbor_rank": int(pairs["rank"][p]), "similarity": float(pairs["sim"][p]),
                "lookalike_score": None if lt_scores is None else float(lt_scores[r]),
                "kept": bool(kept.contains(key)[0]), **fields,
            })
        out.append({"seed": _jsonable(seeds_t.slice(s, 1).to_pylist()[0], cols), "neighbors": neighbours})
    return out
