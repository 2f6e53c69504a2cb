"""Diversity in a batch (issue 17): ``coreset``, ``badge``, ``cluster_margin``, ``typiclust`` and the
``diverse(STRATEGY)`` wrapper.

An uncertainty ranking alone fills a batch with near-duplicates (and, when scores tie, with whatever the id
order says). These strategies spread the batch over the embedding space. Each runs in two streaming passes
over the pool, so it works on pools far larger than memory (10⁷ rows in ``benchmarks/bench_select.py``):

1. **Candidates**: the top M = ⌈``candidate_factor`` · n⌉ eligible items (default factor 10) of one pass
   with the shared top-k — by an uncertainty score, by the wrapped strategy's own ranking, or by seeded
   random keys (``typiclust``, a cold start where the model's scores mean little).
2. **Embeddings**: a second pass reads the ``embedding`` column and keeps only the candidates' rows.

Only the M candidates' embeddings are ever held (M × d float32). Every strategy then works on them alone:

- ``coreset`` (Sener & Savarese 2018): k-center greedy over the candidates (top M by ``uncertainty``,
  default entropy). Distances count from the labelled set when ``labeled`` is given (its ``embedding``
  column) and from the items already picked; each pick is the candidate farthest from all of them.
  score = that distance (inf for a first pick without a labelled set: it is the most uncertain candidate).
- ``diverse(STRATEGY)``: the wrapped strategy's top M (any strategy: ``entropy``, ``qbc``, ``hw``,
  ``lsb-lt`` …) re-ranked for coverage by k-center greedy among themselves, starting from the wrapped
  strategy's best item. score = the wrapped strategy's score; its provenance columns are kept.
- ``badge`` (Ash et al. 2020): k-means++ seeding (D² sampling, seeded) over the gradient embeddings
  g = (p − onehot(argmax p)) ⊗ embedding of the top M by ``uncertainty``. Two economies, both exact: the
  C·d-dimensional g is never formed (‖a⊗e − b⊗f‖² = ‖a‖²‖e‖² + ‖b‖²‖f‖² − 2(a·b)(e·f)), and only the top M
  candidates enter. BADGE's g is the last layer's gradient when ``embedding`` is that layer's input; with
  another embedding (e.g. the backbone's [CLS] under an MLP head) it is the same construction on that space.
  score = D² when picked (‖g‖² for the first, the largest gradient).
- ``cluster_margin`` (Citovsky et al. 2021): the top M by margin, clustered by FAISS k-means into
  ``n_clusters`` clusters (default min(n, 1000); the paper clusters the pool once with HAC, which is
  quadratic), then round-robin over the clusters from the smallest, one seeded-random member per cluster
  and round, as in the paper. score = margin.
- ``typiclust`` (Hacohen et al. 2022, TPC-RP): for a cold start, no model needed (the pool may lack
  ``probs``). A seeded uniform sample of M candidates is clustered into ``n_clusters`` clusters (default
  min(n + labelled items, 1000)); clusters without labelled items come first, larger first, and each gives
  its most typical member — typicality = 1 / mean Euclidean distance to its 20 nearest neighbours within
  the cluster — then round-robin by decreasing typicality. score = typicality.

``metric`` (``cosine``, the default as for LSB, or ``l2``) sets the distance of ``coreset``, ``diverse`` and
the clustering; cosine works on unit-normalised embeddings. Ties go to the better candidate (the candidate
order), so a selection is reproducible; k-means and BADGE's sampling take ``seed``. Provenance columns:
``candidate_rank`` (the item's rank among the candidates, 1 = best), ``coverage_distance`` (``diverse``),
``cluster`` (``cluster_margin``, ``typiclust``: clusters numbered in visiting order from 0).

Cost on top of the two passes: k-center greedy is exact but skips, by the triangle inequality, the candidate
groups a pick cannot reach (:mod:`broaden.select.cluster`), so budgets of 10⁵ from 10⁶ candidates run in
minutes; BADGE's D² sampling prunes far less and costs up to n × M × (C + d) — lower ``candidate_factor``
for budgets above ~10⁴. Items chosen by earlier strategies of a mix are skipped, not used as centers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from broaden.errors import SelectionError
from broaden.io import IdSet, Pool, list_matrix, load_scored
from broaden.select import scores as S
from broaden.select.cluster import badge_seeding, kcenter_greedy, kmeans, typicality
from broaden.select.registry import (
    SelectContext, Strategy, get_strategy, option_number, register_strategy, register_wrapper,
)
from broaden.select.strategies import random_keys, random_strategy
from broaden.topk import rank_order

METRICS = ("cosine", "l2")
#: Cap on the default number of clusters: FAISS k-means costs candidates × clusters × d per iteration.
MAX_CLUSTERS = 1000
#: Neighbours of TypiClust's typicality (the paper's K).
TYPICALITY_K = 20


@dataclass(frozen=True)
class DiversityOptions:
    candidate_factor: float = 10.0
    uncertainty: str = "entropy"
    metric: str = "cosine"
    n_clusters: int | None = None

    @classmethod
    def from_options(cls, options: dict) -> DiversityOptions:
        factor = options.get("candidate_factor")
        factor = cls.candidate_factor if factor is None else option_number("candidate_factor", factor, float)
        if not factor >= 1 or not math.isfinite(factor):
            raise SelectionError(f"candidate_factor must be a finite number >= 1, got {factor!r}")
        kind = options.get("uncertainty") or cls.uncertainty
        if kind not in S.UNCERTAINTY:
            raise SelectionError(f"uncertainty must be one of {', '.join(S.UNCERTAINTY)}, got {kind!r}")
        metric = options.get("metric") or cls.metric
        if metric not in METRICS:
            raise SelectionError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        k = options.get("n_clusters")
        k = None if k is None else option_number("n_clusters", k, int)
        if k is not None and k < 1:
            raise SelectionError(f"n_clusters must be a positive integer, got {k}")
        return cls(candidate_factor=factor, uncertainty=kind, metric=metric, n_clusters=k)

    def size(self, n: int) -> int:
        """How many candidates to keep for a share of ``n`` items."""
        return math.ceil(self.candidate_factor * n)


# ---------------------------------------------------------------------------------- the two passes
def _require_embedding(pool, ctx: SelectContext, name: str) -> None:
    """Fail before the first pass, not after it, when the pool has no embedding column."""
    Pool.of(pool, ctx.columns).require([ctx.columns.embedding], SelectionError, needed_by=f"strategy {name!r}")


def candidate_embeddings(pool, ids: np.ndarray, ctx: SelectContext, *, probs: bool = False
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``embedding`` rows (float32) of ``ids`` — and their ``probs`` (float64) when asked — in the order
    of ``ids``, from one streaming pass that keeps only those rows."""
    c = ctx.columns
    wanted = IdSet(ids)

    def step(parts, keys, batch):
        hit = wanted.contains(keys)
        if hit.any():
            rows = batch.filter(pa.array(hit))
            parts.append((keys[hit], list_matrix(rows.column(c.embedding)),
                          list_matrix(rows.column(c.probs), dtype=np.float64) if probs else None))
        return parts

    parts = ctx.runner.fold(pool, c, init=list, step=step, merge=lambda a, b: a + b,
                            prob_cols=[c.probs] if probs else (), extra_cols=[c.embedding], exclude=ctx.exclude,
                            batch_size=ctx.batch_size, description="reading the candidates' embeddings")
    if not parts:
        return np.zeros((0, 0), np.float32), (np.zeros((0, 0)) if probs else None)
    # Each part straight to its rows (no concatenated copy: the candidates' embeddings are the memory here).
    order = np.argsort(ids, kind="stable")
    emb = np.empty((len(ids), parts[0][1].shape[1]), np.float32)
    prob = np.empty((len(ids), parts[0][2].shape[1])) if probs else None
    while parts:
        keys, e, p = parts.pop()
        pos = order[np.searchsorted(ids[order], keys)]
        emb[pos] = e
        if probs:
            prob[pos] = p
    return emb, prob


def _labelled_embeddings(ctx: SelectContext, dim: int, name: str) -> np.ndarray | None:
    """The labelled set's embeddings (None without a labelled set)."""
    if ctx.labeled is None:
        return None
    c = ctx.columns
    table = load_scored(ctx.labeled, columns=c, require=("id", "embedding"), read_columns=[c.id, c.embedding],
                        what="labelled table")
    emb = list_matrix(table.column(c.embedding))
    if len(emb) and emb.shape[1] != dim:
        raise SelectionError(f"strategy {name!r}: the labelled set's embeddings have dimension {emb.shape[1]}, "
                             f"the pool's {dim}")
    return emb


def _in_metric(x: np.ndarray | None, metric: str) -> np.ndarray | None:
    """Embeddings as the metric sees them: unit rows for cosine (‖u − v‖² = 2 − 2 cos), as given for l2."""
    if x is None or metric == "l2":
        return x
    out = np.empty_like(x, dtype=np.float32)
    for s in range(0, len(x), 65_536):  # in chunks: no float64 copy of all candidates
        chunk = x[s:s + 65_536].astype(np.float64)
        norm = np.sqrt(np.einsum("nd,nd->n", chunk, chunk))[:, None]
        out[s:s + 65_536] = chunk / np.where(norm > 0, norm, 1.0)
    return out


def _metric_distance(l2: np.ndarray, metric: str) -> np.ndarray:
    """An L2 distance between unit vectors as the cosine distance 1 − cos (as LSB reports it); L2 as is."""
    return l2 * l2 / 2.0 if metric == "cosine" else l2


def _by_uncertainty(pool, n: int, ctx: SelectContext, kind: str):
    """The ``n`` most uncertain eligible items by ``kind`` and their scores (the registered strategy)."""
    ids, scores, *_ = get_strategy(kind).fn(pool, n, ctx)
    return np.asarray(ids), np.asarray(scores, dtype=np.float64)


def _details(**cols) -> pa.Table:
    return pa.table({k: pa.array(v) for k, v in cols.items()})


# ------------------------------------------------------------------------------------ strategies
def coreset_strategy(pool, n: int, ctx: SelectContext):
    """k-center greedy (Sener & Savarese 2018) over the top candidates by uncertainty, counting distances
    from the labelled set (when given) and the items picked so far; see the module docstring."""
    o = DiversityOptions.from_options(ctx.options)
    _require_embedding(pool, ctx, "coreset")
    ids, _ = _by_uncertainty(pool, o.size(n), ctx, o.uncertainty)
    if not len(ids):
        return ids, np.empty(0)
    x, _ = candidate_embeddings(pool, ids, ctx)
    centers = _in_metric(_labelled_embeddings(ctx, x.shape[1], "coreset"), o.metric)
    picks, dist = kcenter_greedy(_in_metric(x, o.metric), n, centers=centers, seed=ctx.seed)
    return ids[picks], _metric_distance(dist, o.metric), _details(candidate_rank=picks + 1)


def diverse(inner: Strategy):
    """``diverse(inner)``: ``inner``'s top candidates re-ranked for coverage by k-center greedy."""

    def run(pool, n: int, ctx: SelectContext):
        o = DiversityOptions.from_options(ctx.options)
        _require_embedding(pool, ctx, f"diverse({inner.name})")
        ids, scores, *rest = inner.fn(pool, o.size(n), ctx)
        ids, scores = np.asarray(ids), np.asarray(scores, dtype=np.float64)
        if not len(ids):
            return ids, scores
        x, _ = candidate_embeddings(pool, ids, ctx)
        picks, dist = kcenter_greedy(_in_metric(x, o.metric), n, seed=ctx.seed)
        cover = _details(candidate_rank=picks + 1, coverage_distance=_metric_distance(dist, o.metric))
        details = rest[0] if rest and rest[0] is not None and rest[0].num_columns else None
        if details is not None:  # the inner strategy's provenance (e.g. LSB's seed) rides along
            details = details.take(pa.array(picks, pa.int64()))
            for name in cover.column_names:
                details = details.append_column(name, cover.column(name))
        return ids[picks], scores[picks], details if details is not None else cover

    run.__name__ = f"diverse_{inner.name}"
    run.__doc__ = f"{inner.name}'s top candidates re-ranked for coverage (k-center greedy on the embedding)."
    return run


def badge_strategy(pool, n: int, ctx: SelectContext):
    """BADGE (Ash et al. 2020): k-means++ seeding over gradient embeddings of the top candidates by
    uncertainty; see the module docstring."""
    o = DiversityOptions.from_options(ctx.options)
    _require_embedding(pool, ctx, "badge")
    ids, _ = _by_uncertainty(pool, o.size(n), ctx, o.uncertainty)
    if not len(ids):
        return ids, np.empty(0)
    x, p = candidate_embeddings(pool, ids, ctx, probs=True)
    picks, d2 = badge_seeding(p, x, n, seed=ctx.seed)
    return ids[picks], d2, _details(candidate_rank=picks + 1)


def _round_robin(cluster: np.ndarray, within: np.ndarray, visit: np.ndarray, n: int) -> np.ndarray:
    """Candidate positions in round-robin order: round r takes the r-th member (by ``within``, ascending)
    of every cluster, clusters in ``visit`` order (visit[k] = cluster k's place); the first ``n``."""
    order = np.lexsort((within, cluster))
    first = np.searchsorted(cluster[order], cluster[order], side="left")
    rounds = np.empty(len(cluster), dtype=np.int64)
    rounds[order] = np.arange(len(cluster)) - first
    return np.lexsort((visit[cluster], rounds))[:n]


def _visit_order(keys: tuple[np.ndarray, ...], n_clusters: int) -> np.ndarray:
    """visit[k]: cluster k's place when clusters are sorted by ``keys`` (last key most significant)."""
    visit = np.empty(n_clusters, dtype=np.int64)
    visit[np.lexsort(keys)] = np.arange(n_clusters)
    return visit


def cluster_margin_strategy(pool, n: int, ctx: SelectContext):
    """Cluster-Margin (Citovsky et al. 2021): the lowest-margin candidates, clustered, picked round-robin
    from the smallest cluster; see the module docstring."""
    o = DiversityOptions.from_options(ctx.options)
    _require_embedding(pool, ctx, "cluster_margin")
    ids, margins = _by_uncertainty(pool, o.size(n), ctx, "margin")
    if not len(ids):
        return ids, margins
    x, _ = candidate_embeddings(pool, ids, ctx)
    _, cluster = kmeans(_in_metric(x, o.metric), o.n_clusters or min(n, MAX_CLUSTERS), seed=ctx.seed)
    k = int(cluster.max()) + 1
    size = np.bincount(cluster, minlength=k)
    # Equal sizes: the cluster holding the better candidate first (k-means numbers clusters arbitrarily).
    best = np.full(k, len(ids))
    np.minimum.at(best, cluster, np.arange(len(ids)))
    visit = _visit_order((best, size), k)
    # Within a cluster a seeded random order, as the paper samples uniformly there; ties by candidate rank.
    within = np.lexsort((np.arange(len(ids)), -random_keys(ids, ctx.seed)))
    rank_within = np.empty(len(ids), dtype=np.int64)
    rank_within[within] = np.arange(len(ids))
    picks = _round_robin(cluster, rank_within, visit, n)
    return ids[picks], margins[picks], _details(candidate_rank=picks + 1, cluster=visit[cluster[picks]])


def typiclust_strategy(pool, n: int, ctx: SelectContext):
    """TypiClust (Hacohen et al. 2022, TPC-RP): the most typical member of each of the largest uncovered
    clusters of a uniform sample of the pool; see the module docstring."""
    o = DiversityOptions.from_options(ctx.options)
    _require_embedding(pool, ctx, "typiclust")
    ids, _ = random_strategy(pool, o.size(n), ctx)
    ids = np.asarray(ids)
    if not len(ids):
        return ids, np.empty(0)
    x = _in_metric(candidate_embeddings(pool, ids, ctx)[0], o.metric)
    labelled = _in_metric(_labelled_embeddings(ctx, x.shape[1], "typiclust"), o.metric)
    n_lab = 0 if labelled is None else len(labelled)
    centroids, cluster = kmeans(x, o.n_clusters or min(n + n_lab, MAX_CLUSTERS), seed=ctx.seed)
    k = len(centroids)
    covered = np.zeros(k, dtype=np.int64)
    if n_lab:
        import faiss

        _, near = faiss.knn(np.ascontiguousarray(labelled), np.ascontiguousarray(centroids, np.float32), 1)
        covered = np.bincount(near.ravel(), minlength=k)
    size = np.bincount(cluster, minlength=k)
    best = np.full(k, len(ids))
    np.minimum.at(best, cluster, np.arange(len(ids)))
    # Fewest labelled items first, then the largest; equal ones by their best-ranked member.
    visit = _visit_order((best, -size, covered), k)
    typ = np.zeros(len(ids))
    by_cluster = np.argsort(cluster, kind="stable")
    for members in np.split(by_cluster, np.cumsum(size)[:-1]):
        typ[members] = typicality(x[members], TYPICALITY_K)
    rank_within = np.empty(len(ids), dtype=np.int64)
    rank_within[rank_order(typ, ids)] = np.arange(len(ids))  # most typical first, ties by id
    picks = _round_robin(cluster, rank_within, visit, n)
    return ids[picks], typ[picks], _details(cluster=visit[cluster[picks]])


register_strategy("coreset", coreset_strategy, options=("candidate_factor", "uncertainty", "metric"))
register_strategy("badge", badge_strategy, options=("candidate_factor", "uncertainty"))
register_strategy("cluster_margin", cluster_margin_strategy, options=("candidate_factor", "metric", "n_clusters"))
register_strategy("typiclust", typiclust_strategy, options=("candidate_factor", "metric", "n_clusters"))
register_wrapper("diverse", diverse, options=("candidate_factor", "metric"))
