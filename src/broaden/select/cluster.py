"""Geometry for the diversity strategies (:mod:`broaden.select.diversity`), FAISS-backed.

- :func:`kmeans` — seeded FAISS k-means started from :func:`kmeanspp` (cluster-margin, TypiClust).
- :func:`typicality` — TypiClust's density score (Hacohen et al. 2022, Eq. 1): the inverse mean Euclidean
  distance to the ``k`` nearest other points (FAISS finds the neighbours, the distances are recomputed exactly).
- :func:`kcenter_greedy` — farthest-first traversal (Gonzalez 1985; the coreset of Sener & Savarese 2018).
- :func:`badge_seeding` — k-means++ seeding (D² sampling) over BADGE gradient embeddings (Ash et al. 2020);
  :func:`kmeanspp` the same on plain rows.

The greedy loops run on one engine, :class:`_Farthest`, that keeps every point's exact squared distance to
its nearest chosen center. A new center can only lower the distance of points closer to it than their
current nearest center, so points are grouped by k-means once and a whole group is skipped when the
triangle inequality proves no member can be reached (``‖c − p‖ ≥ ‖c − μ_g‖ − r_g``, r_g the group's
radius around its pivot μ_g). Skipping changes nothing but the work: the picks equal a brute-force loop
over every point, whatever the grouping (ties go to the lowest index), so they do not depend on FAISS's
thread count either. After the first steps each pick touches only the groups near it, which is what makes
budgets of 10⁵ out of 10⁶ candidates feasible (the brute-force loop costs budget × candidates × d).
"""
from __future__ import annotations

import math

import numpy as np

#: Points per block of the row-order prefix sums that D² sampling walks (independent of the grouping).
_BLOCK = 1024
#: Below this many points one group is as fast as any (the skip test cannot pay for itself).
_MIN_GROUPED = 4096
#: Most groups: finer groups skip more, but each pick tests every group (measured best at 1M × 100k picks).
_MAX_GROUPS = 4096
#: The grouping k-means: any partition keeps the picks exact, a rough one is enough to skip most groups.
_GROUPING = {"niter": 4, "max_points_per_centroid": 16, "init": "random"}
#: Rows per chunk of the exact float64 distance computations (bounds the temporary memory).
_CHUNK = 32_768


# ------------------------------------------------------------------------------------------ FAISS
def kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, max_points_per_centroid: int = 256,
           init: str = "k-means++") -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, d) float32, assignment (n,) int64) of a seeded FAISS k-means of the rows of ``x``.

    ``k`` is capped at the number of rows. FAISS trains on at most ``max_points_per_centroid · k`` rows
    drawn with ``seed`` and then assigns every row to its nearest centroid. ``init="k-means++"`` seeds the
    centroids with :func:`kmeanspp` on those rows (FAISS alone starts from random rows, which merges small
    clusters into large ones far more often); ``"random"`` keeps FAISS's own start.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    k = max(1, min(int(k), len(x)))
    if k == 1:
        return x.mean(axis=0, keepdims=True), np.zeros(len(x), dtype=np.int64)
    # min_points_per_centroid=1: a candidate set of 10 per cluster is intended here, not worth a warning.
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed) % 2**31, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    start = None
    if init == "k-means++":
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= max_points_per_centroid * k else \
            x[np.sort(rng.choice(len(x), max_points_per_centroid * k, replace=False))]
        start = sample[kmeanspp(sample, k, seed=seed)[0]]
    km.train(x, init_centroids=start)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign.ravel().astype(np.int64)


def nearest_sqdist(x: np.ndarray, centers: np.ndarray, *, probe: int = 4) -> np.ndarray:
    """Exact squared L2 distance (float64) from each row of ``x`` to its nearest row of ``centers``.

    FAISS proposes ``probe`` nearest centers per row (float32, by the norm expansion, which loses digits
    when points are close); their distances are then recomputed exactly and the smallest kept.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    _, idx = faiss.knn(x, centers, min(probe, len(centers)))
    out = np.empty(len(x))
    for s in range(0, len(x), _CHUNK):
        xs = x[s:s + _CHUNK].astype(np.float64)
        diff = centers[idx[s:s + _CHUNK]].astype(np.float64) - xs[:, None, :]
        out[s:s + _CHUNK] = np.einsum("nkd,nkd->nk", diff, diff).min(axis=1)
    return out


def typicality(x: np.ndarray, k: int = 20) -> np.ndarray:
    """TypiClust typicality of each row: 1 / mean Euclidean distance to its ``min(k, n − 1)`` nearest other
    rows (Hacohen et al. 2022, Eq. 1); a lone row has 0 (no neighbours to be typical among)."""
    import faiss

    n = len(x)
    if n < 2:
        return np.zeros(n)
    kk = min(int(k), n - 1)
    # Centring first keeps FAISS's float32 norm expansion accurate for tight clusters far from the origin.
    xc = np.ascontiguousarray(x - x.mean(axis=0), dtype=np.float32)
    _, idx = faiss.knn(xc, xc, kk + 1)
    mean = np.empty(n)
    for s in range(0, n, _CHUNK):
        xs = x[s:s + _CHUNK].astype(np.float64)
        diff = x[idx[s:s + _CHUNK]].astype(np.float64) - xs[:, None, :]
        d = np.sort(np.sqrt(np.einsum("nkd,nkd->nk", diff, diff)), axis=1)
        mean[s:s + _CHUNK] = d[:, 1:].mean(axis=1)  # the smallest is the row itself (or a duplicate: also 0)
    with np.errstate(divide="ignore"):
        return np.where(mean > 0, 1.0 / np.where(mean > 0, mean, 1.0), np.inf)


# ------------------------------------------------------------------------------------ the spaces
def _sqnorms(x: np.ndarray) -> np.ndarray:
    """Squared row norms of a float32 matrix, computed in float64."""
    return np.concatenate([np.einsum("nd,nd->n", x[s:s + _CHUNK].astype(np.float64), x[s:s + _CHUNK])
                           for s in range(0, len(x), _CHUNK)] or [np.zeros(0)])


class _Points:
    """Rows of ``x`` under the Euclidean distance; group pivots are the k-means centroids."""

    def __init__(self, x: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.n = len(self.x)
        self.nx = _sqnorms(self.x)

    def sqnorm(self) -> np.ndarray:
        return self.nx

    def sqdist(self, idx: np.ndarray, c: int) -> np.ndarray:
        # The norm expansion in float64 of float32 inputs keeps ~9 more digits than the inputs carry.
        xc = self.x[c].astype(np.float64)
        out = np.empty(len(idx))
        for s in range(0, len(idx), _CHUNK):
            i = idx[s:s + _CHUNK]
            out[s:s + _CHUNK] = self.nx[i] + self.nx[c] - 2.0 * np.einsum("nd,d->n", self.x[i], xc)
        return np.maximum(out, 0.0)

    def group(self, n_groups: int, seed: int) -> np.ndarray:
        centroids, assign = kmeans(self.x, n_groups, seed=seed, **_GROUPING)
        self.pivots = centroids.astype(np.float64)
        self.npiv = np.einsum("gd,gd->g", self.pivots, self.pivots)
        return assign

    def pivot_dist(self, c: int) -> np.ndarray:
        # The norm expansion (a matrix-vector product) is off by far less than _Farthest's slack.
        d2 = self.npiv + self.nx[c] - 2.0 * (self.pivots @ self.x[c].astype(np.float64))
        return np.sqrt(np.maximum(d2, 0.0))

    def radii(self, idx: np.ndarray, g: int) -> np.ndarray:
        diff = self.x[idx].astype(np.float64) - self.pivots[g]
        return np.sqrt(np.einsum("nd,nd->n", diff, diff))


class _RankOne:
    """BADGE gradient embeddings g_i = a_i ⊗ e_i (a_i = p_i − onehot(ŷ_i), e_i the embedding), never
    materialised: ‖a ⊗ e − b ⊗ f‖² = ‖a‖²‖e‖² + ‖b‖²‖f‖² − 2 (a·b)(e·f) costs C + d per pair instead of C·d.
    Group pivots are rank-one too (the best rank-one approximation of the group's mean gradient)."""

    def __init__(self, a: np.ndarray, e: np.ndarray):
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.e = np.ascontiguousarray(e, dtype=np.float32)
        self.n = len(self.a)
        self.na = np.einsum("nc,nc->n", self.a, self.a)
        self.ne = _sqnorms(self.e)

    def sqnorm(self) -> np.ndarray:
        return self.na * self.ne

    def _sq(self, na, ne, ab, ef, nb, nf) -> np.ndarray:
        return np.maximum(na * ne + nb * nf - 2.0 * ab * ef, 0.0)  # ≥ 0 up to rounding

    def sqdist(self, idx: np.ndarray, c: int) -> np.ndarray:
        ac, ec = self.a[c], self.e[c].astype(np.float64)
        out = np.empty(len(idx))
        for s in range(0, len(idx), _CHUNK):
            i = idx[s:s + _CHUNK]
            ab = np.einsum("nc,c->n", self.a[i], ac)
            ef = np.einsum("nd,d->n", self.e[i], ec)  # float64 products without a float64 copy of the rows
            out[s:s + _CHUNK] = self._sq(self.na[i], self.ne[i], ab, ef, self.na[c], self.ne[c])
        return out

    def group(self, n_groups: int, seed: int) -> np.ndarray:
        # ‖a⊗e − b⊗f‖ ≤ ‖a − b‖‖e‖ + ‖b‖‖e − f‖: points close in both factors are close, so a group is a pair
        # (k-means cluster of a, which also separates the predicted classes, k-means cluster of e).
        C = self.a.shape[1]
        ka = max(1, min(int(math.sqrt(n_groups)), 4 * C))
        _, on_a = kmeans(self.a, ka, seed=seed, **_GROUPING)
        _, on_e = kmeans(self.e, max(1, n_groups // ka), seed=seed, **_GROUPING)
        _, assign = np.unique(on_a * (int(on_e.max()) + 1) + on_e, return_inverse=True)
        G = int(assign.max()) + 1
        self.pu, self.pv = np.zeros((G, C)), np.zeros((G, self.e.shape[1]))
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(G + 1))
        for g in range(G):
            m = order[bounds[g]:bounds[g + 1]]
            mean = self.a[m].T @ self.e[m].astype(np.float64) / len(m)  # (C, d): the group's mean gradient
            u, sv, vt = np.linalg.svd(mean, full_matrices=False)
            self.pu[g], self.pv[g] = u[:, 0] * sv[0], vt[0]
        self.npu = np.einsum("gc,gc->g", self.pu, self.pu)
        self.npv = np.einsum("gd,gd->g", self.pv, self.pv)
        return assign

    def pivot_dist(self, c: int) -> np.ndarray:
        ab, ef = self.pu @ self.a[c], self.pv @ self.e[c].astype(np.float64)
        return np.sqrt(self._sq(self.npu, self.npv, ab, ef, self.na[c], self.ne[c]))

    def radii(self, idx: np.ndarray, g: int) -> np.ndarray:
        ab = self.a[idx] @ self.pu[g]
        ef = self.e[idx].astype(np.float64) @ self.pv[g]
        return np.sqrt(self._sq(self.na[idx], self.ne[idx], ab, ef, self.npu[g], self.npv[g]))


# ------------------------------------------------------------------------------------ the engine
class _Farthest:
    """Every point's exact squared distance to its nearest chosen center (``mind``), updated as centers
    are added, skipping the groups a new center provably cannot reach (module docstring)."""

    def __init__(self, space, init: np.ndarray | None = None, *, picks: int, n_groups: int | None = None,
                 seed: int = 0, sampling: bool = False):
        n = space.n
        self.space = space
        self.mind = np.full(n, np.inf) if init is None else np.asarray(init, dtype=np.float64).copy()
        self.picked = np.zeros(n, dtype=bool)
        if n_groups is None:
            # More picks cover the space more finely, and finer groups then skip more: √(n · picks) / 10,
            # between √n and _MAX_GROUPS (0.1 M candidates × 10k picks: 9 s vs 66 s with √n groups).
            n_groups = 1 if n < _MIN_GROUPED else int(min(max(math.sqrt(n * picks) / 10, math.sqrt(n)), _MAX_GROUPS))
        self.grouped = n_groups > 1
        # Distances by the norm expansion are off by up to ~1e-8 of the largest norm, even between close points.
        self.tol = 1e-7 * math.sqrt(float(space.sqnorm().max())) if n else 0.0
        assign = space.group(n_groups, seed) if self.grouped else np.zeros(n, dtype=np.int64)
        self.members = np.argsort(assign, kind="stable")  # by group, then by index
        G = int(assign.max()) + 1 if n else 0
        self.offsets = np.searchsorted(assign[self.members], np.arange(G + 1))
        self.counts = np.diff(self.offsets)
        self.group_of = assign
        if self.grouped:  # each point's distance to its group's pivot, and each group's radius
            self.rad = np.zeros(n)
            for g in np.flatnonzero(self.counts):
                self.rad[self._segment(g)] = space.radii(self._segment(g), g)
            self.radius = np.zeros(G)
            full = self.counts > 0
            self.radius[full] = np.maximum.reduceat(self.rad[self.members], self.offsets[:-1][full])
        self.gmax = np.full(G, -np.inf)
        nonempty = self.counts > 0
        self.gmax[nonempty] = np.maximum.reduceat(self.mind[self.members], self.offsets[:-1][nonempty])
        self.sampling = sampling
        if sampling:  # row-order block sums: D² sampling walks them, whatever the grouping
            self._weights = np.zeros(-(-n // _BLOCK) * _BLOCK)
            self._weights[:n] = self.mind
            self.bsum = self._weights.reshape(-1, _BLOCK).sum(axis=1)

    def _segment(self, g: int) -> np.ndarray:
        return self.members[self.offsets[g]:self.offsets[g + 1]]

    def add(self, c: int) -> None:
        """Make point ``c`` a center: lower every reachable point's distance to it."""
        self.picked[c] = True
        if self.grouped:
            piv = self.space.pivot_dist(c)
            # Slack for rounding in the bounds: skipping must never be wrong; scanning a little more is harmless.
            lower = piv - self.radius - 1e-7 * (piv + self.radius) - self.tol
            reach = np.flatnonzero((self.counts > 0) & ((lower <= 0) | (lower * lower < self.gmax)))
            lens = self.counts[reach]
            begin = np.cumsum(lens) - lens
            idx = self.members[np.repeat(self.offsets[reach] - begin, lens) + np.arange(int(lens.sum()))]
            # The same bound point by point (‖c − p‖ ≥ |‖c − μ‖ − ‖p − μ‖|) spares most exact distances.
            pp, rp = piv[self.group_of[idx]], self.rad[idx]
            lb = np.abs(pp - rp) - 1e-7 * (pp + rp) - self.tol
            todo = idx[(lb <= 0) | (lb * lb < self.mind[idx])]
        else:
            reach, begin = np.array([0]), np.array([0])
            idx = todo = self.members
        d = self.space.sqdist(todo, c)
        closer = d < self.mind[todo]
        changed = np.append(todo[closer], c)
        self.mind[todo[closer]] = d[closer]
        self.mind[c] = 0.0  # exactly 0, even where the rank-one expansion leaves rounding
        self.gmax[reach] = np.maximum.reduceat(self.mind[idx], begin)
        if self.sampling:
            self._weights[changed] = self.mind[changed]
            touched = np.zeros(len(self.bsum), dtype=bool)
            touched[changed // _BLOCK] = True
            blocks = np.flatnonzero(touched)
            self.bsum[blocks] = self._weights.reshape(-1, _BLOCK)[blocks].sum(axis=1)

    def farthest(self) -> tuple[int, float]:
        """The unpicked point farthest from every center (lowest index on ties) and its squared distance."""
        top = self.gmax.max()
        if not top > 0:  # every point left coincides with a center
            j = int(np.argmin(self.picked))
            return j, 0.0
        best = None
        for g in np.flatnonzero(self.gmax == top):
            seg = self._segment(g)
            j = int(seg[np.argmax(self.mind[seg])])
            best = j if best is None else min(best, j)
        return best, float(top)

    def sample(self, u: float) -> int:
        """The point at ``u · Σ mind`` of the row-order prefix sums of ``mind`` (D² sampling with a
        uniform ``u``); the lowest unpicked index when every distance left is 0."""
        cum = np.cumsum(self.bsum)
        total = cum[-1] if len(cum) else 0.0
        if not total > 0:
            return int(np.argmin(self.picked))
        target = u * total
        b = min(int(np.searchsorted(cum, target, side="right")), len(cum) - 1)
        w = np.cumsum(self._weights[b * _BLOCK:(b + 1) * _BLOCK])
        j = b * _BLOCK + min(int(np.searchsorted(w, target - (cum[b] - self.bsum[b]), side="right")), _BLOCK - 1)
        while self._weights[j] <= 0:  # rounding at a block edge: move to the next point with weight
            j = (j + 1) % len(self._weights)
        return j


# --------------------------------------------------------------------------------- the two loops
def kcenter_greedy(x: np.ndarray, n: int, *, centers: np.ndarray | None = None, n_groups: int | None = None,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Farthest-first traversal (k-center greedy; Sener & Savarese 2018, Alg. 1) of the rows of ``x``.

    Each pick is the row farthest (L2) from its nearest center, the centers being ``centers`` (e.g. the
    labelled set) and the rows picked so far; ties go to the lowest row index, so without ``centers`` the
    first pick is row 0. Returns the ``min(n, len(x))`` picked row indices in pick order and their L2
    distance to the nearest center when picked (inf for a first pick without centers). ``n_groups``
    (default about √(len(x) · n) / 10 from 4096 rows on) and ``seed`` only set how much work is skipped,
    never the result.
    """
    init = None
    if centers is not None and len(centers):
        if np.shape(centers)[1] != np.shape(x)[1]:
            raise ValueError(f"centers have dimension {np.shape(centers)[1]}, the points {np.shape(x)[1]}")
        init = nearest_sqdist(x, centers)
    n = min(int(n), len(x))
    engine = _Farthest(_Points(x), init, picks=n, n_groups=n_groups, seed=seed)
    picks, dist = np.empty(n, dtype=np.int64), np.empty(n)
    for t in range(n):
        picks[t], dist[t] = engine.farthest()
        engine.add(int(picks[t]))
    return picks, np.sqrt(dist)


def gradient_factors(probs: np.ndarray) -> np.ndarray:
    """a = p − onehot(argmax p): BADGE's gradient embedding of the last layer at the predicted label is
    a ⊗ h for the layer's input h (Ash et al. 2020, Eq. 1 up to sign)."""
    a = np.array(probs, dtype=np.float64)
    a[np.arange(len(a)), a.argmax(axis=1)] -= 1.0
    return a


def badge_seeding(probs: np.ndarray, embedding: np.ndarray, n: int, *, seed: int = 0,
                  n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BADGE (Ash et al. 2020): k-means++ seeding over gradient embeddings g = (p − onehot(ŷ)) ⊗ embedding.

    As in the authors' code, the first pick is the largest gradient (argmax ‖g‖²); each next pick is drawn
    with probability ∝ D², the squared distance to the nearest pick so far, by inverting the row-order
    cumulative sum of D² at ``u · Σ D²`` with ``u = numpy.random.default_rng(seed).random()`` (one draw per
    pick). Returns the picked rows in pick order and their D² when picked (‖g‖² for the first).
    """
    space = _RankOne(gradient_factors(probs), embedding)
    sq = space.sqnorm()
    first = int(np.argmax(sq)) if len(sq) else 0
    return _d2_sampling(space, n, first, sq[first] if len(sq) else 0.0, seed=seed, n_groups=n_groups)


def kmeanspp(x: np.ndarray, n: int, *, seed: int = 0, n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of the rows of ``x``: the first pick uniform, each
    next one drawn ∝ D² as in :func:`badge_seeding` (same draws). Returns the picks and their D²."""
    rng = np.random.default_rng(seed)
    return _d2_sampling(_Points(x), n, int(rng.integers(len(x))), np.inf, seed=seed, n_groups=n_groups, rng=rng)


def _d2_sampling(space, n: int, first: int, first_d2: float, *, seed: int, n_groups: int | None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``first`` (reported with ``first_d2``), then ``n − 1`` D² draws (one ``rng.random()`` each): the
    picks and their D² when picked."""
    n = min(int(n), space.n)
    picks, d2 = np.empty(n, dtype=np.int64), np.empty(n)
    if n == 0:
        return picks, d2
    engine = _Farthest(space, None, picks=n, n_groups=n_groups, seed=seed, sampling=True)
    rng = np.random.default_rng(seed) if rng is None else rng
    picks[0], d2[0] = first, first_d2
    engine.add(first)
    for t in range(1, n):
        j = engine.sample(rng.random())
        picks[t], d2[t] = j, engine.mind[j]
        engine.add(j)
    return picks, d2


__all__ = ["badge_seeding", "gradient_factors", "kcenter_greedy", "kmeans", "kmeanspp", "nearest_sqdist",
           "typicality"]
