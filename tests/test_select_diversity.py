"""Diversity in a batch (issue 17): k-center greedy and BADGE's k-means++ against brute-force loops written
here, coreset against scikit-activeml and small-text, TypiClust against scikit-activeml and a planted
densest point, cluster-margin's round-robin, diverse(entropy) against plain entropy on a redundant pool, and
every strategy through select() and `broaden select` on a Parquet pool."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.io import make_scored_table
from broaden.select import SelectionError, register_strategy, registry, select
from broaden.select.cluster import badge_seeding, kcenter_greedy, kmeanspp, typicality


# ------------------------------------------------------------------------------------ references
def brute_kcenter(x, n, centers=None):
    """Farthest-first traversal, every distance recomputed in float64; ties to the lowest index."""
    x = np.asarray(x, dtype=np.float64)
    if centers is None:
        mind = np.full(len(x), np.inf)
    else:
        c = np.asarray(centers, dtype=np.float64)
        mind = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1).min(axis=1)
    picked, out, dist = np.zeros(len(x), bool), [], []
    for _ in range(n):
        j = int(np.argmax(np.where(picked, -np.inf, mind)))
        out.append(j)
        dist.append(np.sqrt(mind[j]))
        picked[j] = True
        mind = np.minimum(mind, ((x - x[j]) ** 2).sum(axis=1))
    return np.array(out), np.array(dist)


def gradient_embedding(probs, emb):
    """BADGE's g = (p − onehot(argmax p)) ⊗ h, materialised (C·d columns)."""
    a = np.array(probs, dtype=np.float64)
    a[np.arange(len(a)), a.argmax(axis=1)] -= 1.0
    return (a[:, :, None] * np.asarray(emb, dtype=np.float64)[:, None, :]).reshape(len(a), -1)


def brute_badge(probs, emb, n, seed):
    """k-means++ seeding as in Ash et al.'s code: argmax ‖g‖² first, then D² sampling by inverting the
    cumulative sum at u · ΣD², one u = default_rng(seed).random() per pick."""
    g = gradient_embedding(probs, emb)
    j = int(np.argmax((g ** 2).sum(axis=1)))
    out, mind = [j], ((g - g[j]) ** 2).sum(axis=1)
    rng = np.random.default_rng(seed)
    for _ in range(n - 1):
        cum = np.cumsum(mind)
        j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        out.append(j)
        mind = np.minimum(mind, ((g - g[j]) ** 2).sum(axis=1))
    return np.array(out)


def blobs(rng, sizes, d=8, spread=0.3, sep=20.0):
    """Well-separated Gaussian blobs: (points, blob index)."""
    centers = rng.normal(size=(len(sizes), d)) * sep
    which = np.repeat(np.arange(len(sizes)), sizes)
    return (centers[which] + spread * rng.normal(size=(len(which), d))).astype(np.float32), which


# ------------------------------------------------------------------------------- k-center greedy
@pytest.mark.parametrize("m, n_groups", [(400, 1), (400, 17), (5000, None)])
@pytest.mark.parametrize("with_centers", [False, True])
def test_kcenter_greedy_equals_brute_force(rng, m, n_groups, with_centers):
    x, _ = blobs(rng, [m // 8] * 8, d=12, spread=2.0, sep=6.0)
    centers = rng.normal(size=(25, 12)).astype(np.float32) * 6 if with_centers else None
    picks, dist = kcenter_greedy(x, 60, centers=centers, n_groups=n_groups)
    ref, ref_dist = brute_kcenter(x, 60, centers)
    assert picks.tolist() == ref.tolist()
    assert np.allclose(dist, ref_dist, rtol=1e-9)
    if not with_centers:
        assert picks[0] == 0 and np.isinf(dist[0])  # no center yet: the first row (the best candidate)


def test_kcenter_greedy_ties_go_to_the_lowest_index():
    x = np.array([[0, 0], [3, 0], [0, 3], [3, 0], [0, 3]], dtype=np.float32)  # rows 3, 4 repeat 1, 2
    picks, dist = kcenter_greedy(x, 5)
    assert picks.tolist() == [0, 1, 2, 3, 4] and dist.tolist()[1:] == [3.0, 3.0, 0.0, 0.0]
    assert kcenter_greedy(x, 5, n_groups=2)[0].tolist() == [0, 1, 2, 3, 4]


def test_kcenter_greedy_equals_scikit_activeml_coreset(rng):
    from skactiveml.pool import CoreSet

    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.full(300, np.nan)
    y[:20] = rng.integers(0, 3, 20)  # the first 20 rows are labelled: the initial centers
    want = CoreSet(random_state=0).query(x.astype(np.float64), y, batch_size=25)
    picks, _ = kcenter_greedy(x[20:], 25, centers=x[:20])
    assert (picks + 20).tolist() == list(want)


def test_coreset_equals_small_text_greedy_coreset(rng):
    """select(…, "coreset") with every pool item a candidate and cosine distances equals small-text's
    greedy_coreset (labelled rows as the initial centers), and its score is the cosine distance 1 − cos."""
    from small_text.query_strategies.coresets import greedy_coreset

    n_pool, n_lab, budget = 250, 15, 20
    emb = rng.normal(size=(n_pool + n_lab, 10)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=n_pool + n_lab)
    pool = make_scored_table(np.arange(n_pool), probs[:n_pool], emb[:n_pool])
    labeled = make_scored_table(np.arange(1000, 1000 + n_lab), probs[n_pool:], emb[n_pool:],
                                rng.integers(0, 3, n_lab))
    out = select(pool, "coreset", budget, labeled=labeled, candidate_factor=n_pool / budget)
    unit = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # small-text takes arccos of a point's similarity to itself, 1 + ε
        want = greedy_coreset(unit, np.arange(n_pool), np.arange(n_pool, n_pool + n_lab), budget, normalized=True)
    assert out.column("id").to_pylist() == want.tolist()
    # score: cosine distance of each pick to the nearest labelled item or earlier pick
    got = out.column("id").to_numpy()
    for t, j in enumerate(got):
        near = np.concatenate([unit[n_pool:], unit[got[:t]]])
        assert out.column("score")[t].as_py() == pytest.approx((1 - near @ unit[j]).min(), abs=1e-6)


# -------------------------------------------------------------------------------------- BADGE
@pytest.mark.parametrize("m, n_groups", [(300, 1), (300, 12), (5000, None)])
def test_badge_seeding_equals_brute_force_with_the_same_draws(rng, m, n_groups):
    emb, _ = blobs(rng, [m // 6] * 6, d=10, spread=1.0, sep=4.0)
    probs = rng.dirichlet(np.full(4, 0.7), size=len(emb))
    picks, d2 = badge_seeding(probs, emb, 40, seed=7, n_groups=n_groups)
    assert picks.tolist() == brute_badge(probs, emb, 40, seed=7).tolist()
    g = gradient_embedding(probs, emb)
    assert d2[0] == pytest.approx((g[picks[0]] ** 2).sum())
    for t in range(1, 40):  # D² when picked: squared distance to the nearest earlier pick
        assert d2[t] == pytest.approx(((g[picks[:t]] - g[picks[t]]) ** 2).sum(axis=1).min(), rel=1e-9)


def test_kmeanspp_equals_brute_force_with_the_same_draws(rng):
    x, _ = blobs(rng, [700] * 7, d=5, spread=1.0, sep=4.0)  # 4900 rows: the grouped path
    picks, d2 = kmeanspp(x, 30, seed=2)
    rng_ref = np.random.default_rng(2)
    xx = x.astype(np.float64)
    ref = [int(rng_ref.integers(len(x)))]  # k-means++: the first center uniform
    mind = ((xx - xx[ref[0]]) ** 2).sum(axis=1)
    for _ in range(29):
        cum = np.cumsum(mind)
        ref.append(int(np.searchsorted(cum, rng_ref.random() * cum[-1], side="right")))
        mind = np.minimum(mind, ((xx - xx[ref[-1]]) ** 2).sum(axis=1))
    assert picks.tolist() == ref


def test_badge_samples_proportionally_to_d_squared(rng):
    """The second pick's frequencies over many seeds follow D² / ΣD² (chi-square), whatever the inversion."""
    from scipy.stats import chisquare

    emb = rng.normal(size=(8, 3)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=8)
    g = gradient_embedding(probs, emb)
    first = int(np.argmax((g ** 2).sum(axis=1)))
    d2 = ((g - g[first]) ** 2).sum(axis=1)
    seconds = np.array([badge_seeding(probs, emb, 2, seed=s)[0][1] for s in range(3000)])
    assert not (seconds == first).any()
    observed = np.bincount(seconds, minlength=8)
    keep = d2 > 0
    assert chisquare(observed[keep], 3000 * d2[keep] / d2.sum()).pvalue > 1e-3
    again = badge_seeding(probs, emb, 5, seed=11)[0]
    assert again.tolist() == badge_seeding(probs, emb, 5, seed=11)[0].tolist()  # deterministic under seed


# ------------------------------------------------------------------------------ cluster-margin
def test_cluster_margin_takes_one_per_cluster_before_repeating(rng):
    sizes = [60, 10, 40, 20, 50, 30]
    emb, blob = blobs(rng, sizes)
    probs = rng.dirichlet(np.ones(3), size=len(emb))
    pool = make_scored_table(np.arange(len(emb)), probs, emb)
    out = select(pool, "cluster_margin", 12, n_clusters=6, candidate_factor=len(emb) / 12, seed=3)
    ids = out.column("id").to_numpy()
    by_size = np.argsort(sizes)  # smallest cluster first
    assert blob[ids[:6]].tolist() == by_size.tolist()  # round 1: every cluster once, smallest first
    assert blob[ids[6:]].tolist() == by_size.tolist()  # round 2: again, in the same order
    assert out.column("cluster").to_pylist() == list(range(6)) * 2
    top2 = np.sort(probs, axis=1)[:, -2:]
    assert np.allclose(out.column("score").to_numpy(), (top2[:, 1] - top2[:, 0])[ids], atol=1e-6)
    assert select(pool, "cluster_margin", 12, n_clusters=6, candidate_factor=len(emb) / 12, seed=3).equals(out)
    other = select(pool, "cluster_margin", 12, n_clusters=6, candidate_factor=len(emb) / 12, seed=4)
    assert other.column("id").to_pylist() != ids.tolist()  # the member within a cluster is drawn with the seed


# ----------------------------------------------------------------------------------- TypiClust
def planted_blobs(rng, sizes, d=6):
    """Blobs whose densest point is planted: a core with 25 satellites at distance 0.05 around it."""
    emb, blob = blobs(rng, sizes, d=d, spread=1.0)
    cores = []
    for b in range(len(sizes)):
        rows = np.flatnonzero(blob == b)
        core, sats = rows[0], rows[1:26]
        step = rng.normal(size=(25, d))
        emb[sats] = emb[core] + 0.05 * step / np.linalg.norm(step, axis=1, keepdims=True)
        cores.append(core)
    return emb, blob, np.array(cores)


def test_typiclust_picks_the_planted_densest_point_of_each_cluster(rng):
    sizes = [120, 80, 200, 60]
    emb, blob, cores = planted_blobs(rng, sizes)
    pool = make_scored_table(np.arange(len(emb)), rng.dirichlet(np.ones(2), size=len(emb)), emb)
    out = select(pool, "typiclust", 4, candidate_factor=len(emb) / 4, metric="l2")
    ids = out.column("id").to_numpy()
    assert ids.tolist() == cores[np.argsort(sizes)[::-1]].tolist()  # largest cluster first
    for t, i in enumerate(ids):  # score: 1 / mean distance to the 20 nearest members of its cluster
        members = emb[blob == blob[i]].astype(np.float64)
        d = np.sort(np.sqrt(((members - emb[i]) ** 2).sum(axis=1)))[1:21]
        assert out.column("score")[t].as_py() == pytest.approx(1 / d.mean(), rel=1e-6)
    # a labelled item in the largest cluster covers it: the uncovered clusters come first
    lab = make_scored_table([10_000], rng.dirichlet(np.ones(2), size=1), emb[cores[2]][None], [0])
    covered = select(pool, "typiclust", 4, labeled=lab, n_clusters=4, candidate_factor=len(emb) / 4, metric="l2")
    assert covered.column("id").to_numpy()[-1] == cores[2]


def test_typiclust_equals_scikit_activeml(rng):
    from sklearn.cluster import KMeans
    from skactiveml.pool import TypiClust

    sizes = [90, 150, 60, 120, 30]
    emb, _, _ = planted_blobs(rng, sizes)
    x = emb.astype(np.float64)
    want = TypiClust(k=20, cluster_algo=KMeans, cluster_algo_dict={"n_init": 10}, random_state=0).query(
        x, np.full(len(x), np.nan), batch_size=5)
    pool = make_scored_table(np.arange(len(emb)), rng.dirichlet(np.ones(2), size=len(emb)), emb)
    out = select(pool, "typiclust", 5, candidate_factor=len(emb) / 5, metric="l2")
    assert out.column("id").to_pylist() == list(want)


def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest(rng):
    x = rng.normal(size=(40, 3)).astype(np.float32)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    ref = 1 / np.sort(d, axis=1)[:, 1:6].mean(axis=1)
    assert np.allclose(typicality(x, k=5), ref, rtol=1e-9)
    assert typicality(x[:1]).tolist() == [0.0]


# ---------------------------------------------------------------------------------- diverse(·)
def redundant_pool(rng):
    """10 clusters; the 50 most uncertain items are near-duplicates in cluster 0, the next 45 are spread
    over clusters 1–9, the rest are confident."""
    centers = rng.normal(size=(10, 16)) * 10
    which = np.concatenate([np.zeros(50, int), np.repeat(np.arange(1, 10), 5), rng.integers(0, 10, 905)])
    emb = centers[which] + rng.normal(size=(len(which), 16)) * np.where(np.arange(len(which)) < 50, 0.01, 1)[:, None]
    probs = np.empty((len(which), 3))
    probs[:50] = [0.34, 0.33, 0.33]
    probs[50:95] = rng.dirichlet(np.full(3, 30), size=45)  # uncertain, a little less
    probs[95:] = rng.dirichlet([20, 1, 1], size=905)
    return make_scored_table(np.arange(len(which)), probs, emb), which


def test_diverse_entropy_covers_more_clusters_than_entropy(rng):
    pool, which = redundant_pool(rng)
    plain = select(pool, "entropy", 10).column("id").to_numpy()
    wide = select(pool, "diverse(entropy)", 10)
    ids = wide.column("id").to_numpy()
    assert len(set(which[plain])) == 1
    assert len(set(which[ids])) == 10
    assert ids[0] == plain[0]  # the first pick is the wrapped strategy's best
    # the score stays entropy's; candidate_rank is the rank entropy gave the item
    ent = select(pool, "entropy", 100)
    rank = dict(zip(ent.column("id").to_pylist(), range(1, 101)))
    assert wide.column("candidate_rank").to_pylist() == [rank[i] for i in ids.tolist()]
    assert np.allclose(wide.column("score").to_numpy(),
                       [ent.column("score")[rank[i] - 1].as_py() for i in ids.tolist()])


def test_diverse_keeps_the_wrapped_strategys_provenance(rng, monkeypatch):
    registry.available_strategies()  # register the plugin strategies in the real registry before copying it
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def tagged(pool, n, ctx):  # entropy's ranking with a provenance column, as LSB reports its seeds
        ids, scores = registry.get_strategy("entropy").fn(pool, n, ctx)
        return ids, scores, pa.table({"tag": [f"t{i}" for i in ids.tolist()]})

    register_strategy("tagged", tagged)
    pool, _ = redundant_pool(rng)
    out = select(pool, "diverse(tagged)", 10)
    assert out.column("tag").to_pylist() == [f"t{i}" for i in out.column("id").to_pylist()]
    assert out.column("id").equals(select(pool, "diverse(entropy)", 10).column("id"))


def test_diverse_wraps_any_strategy_in_a_mix(rng):
    pool, which = redundant_pool(rng)
    out = select(pool, "entropy:0.5,diverse(margin):0.5", 20)
    strat = out.column("strategy").to_pylist()
    assert strat == ["entropy"] * 10 + ["diverse(margin)"] * 10
    assert len(set(out.column("id").to_pylist())) == 20
    assert out.column("coverage_distance").null_count == 10  # null on entropy's rows


# ------------------------------------------------------------------------ select() and the CLI
STRATEGIES = ["coreset", "badge", "cluster_margin", "typiclust", "diverse(entropy)"]


def _parquet_pool(tmp_path, rng, n=900):
    emb, _ = blobs(rng, [n // 9] * 9, d=8, spread=1.5, sep=5.0)
    table = make_scored_table(np.arange(n) * 3 + 1, rng.dirichlet(np.ones(4), size=n), emb,
                              extra={"note": [f"row{i}" for i in range(n)]})
    folder = tmp_path / "pool"
    folder.mkdir()
    for i, (a, b) in enumerate([(0, 250), (250, 251), (251, 700), (700, n)]):
        pq.write_table(table.slice(a, b - a), folder / f"part-{i}.parquet")
    pq.write_table(table, tmp_path / "one.parquet")
    labeled = make_scored_table(np.arange(5000, 5030), rng.dirichlet(np.ones(4), size=30),
                                emb[rng.integers(0, n, 30)] + 0.1, rng.integers(0, 4, 30))
    pq.write_table(labeled, tmp_path / "labeled.parquet")
    return table, folder, tmp_path / "labeled.parquet"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_through_select_and_the_cli(tmp_path, rng, strategy):
    _, folder, labeled = _parquet_pool(tmp_path, rng)
    table = pq.read_table(tmp_path / "one.parquet")
    exclude = table.column("id").to_pylist()[:40:2]
    api = select(folder, strategy, 30, exclude=exclude, labeled=labeled, seed=5, batch_size=64)
    ids = api.column("id").to_pylist()
    assert len(set(ids)) == 30 and not set(ids) & set(exclude)
    assert api.column("strategy").to_pylist() == [strategy] * 30
    assert api.column("rank").to_pylist() == list(range(1, 31))
    assert api.column("note").to_pylist() == [f"row{(i - 1) // 3}" for i in ids]  # pool columns ride along
    assert ({"candidate_rank", "cluster"} & set(api.column_names))  # provenance
    # streaming: one file in one batch gives the same batch as 4 files in batches of 64 rows
    assert select(tmp_path / "one.parquet", strategy, 30, exclude=exclude, labeled=labeled, seed=5).equals(api)
    out = tmp_path / "out.parquet"
    argv = ["select", str(folder), "--strategy", strategy, "--budget", "30", "--out", str(out), "--seed", "5",
            "--labeled", str(labeled), "--batch-size", "64", "--exclude", str(tmp_path / "ex.txt")]
    (tmp_path / "ex.txt").write_text("\n".join(map(str, exclude)))
    assert main(argv) == 0
    assert pq.read_table(out).equals(api)


def test_cli_options_reach_the_strategies(tmp_path, rng):
    table, folder, _ = _parquet_pool(tmp_path, rng)
    out = tmp_path / "out.parquet"
    assert main(["select", str(folder), "--strategy", "cluster_margin:0.5,coreset:0.5", "--budget", "20",
                 "--out", str(out), "--n-clusters", "3", "--candidate-factor", "4", "--metric", "l2",
                 "--uncertainty", "margin"]) == 0
    want = select(folder, "cluster_margin:0.5,coreset:0.5", 20, n_clusters=3, candidate_factor=4, metric="l2",
                  uncertainty="margin")
    assert pq.read_table(out).equals(want)
    clusters = pq.read_table(out).column("cluster").to_pylist()[:10]
    assert set(clusters) == {0, 1, 2}


def test_bad_options_and_inputs_are_clear_errors(rng):
    emb, _ = blobs(rng, [50, 50])
    pool = make_scored_table(np.arange(100), rng.dirichlet(np.ones(3), size=100), emb)
    for options, message in [({"candidate_factor": 0.5}, "candidate_factor must be a finite number >= 1"),
                             ({"metric": "manhattan"}, "metric must be one of cosine, l2"),
                             ({"n_clusters": 0}, "n_clusters must be a positive integer"),
                             ({"n_clusters": 2.5}, "n_clusters: 2.5 is not an integer"),
                             ({"uncertainty": "variance"}, "uncertainty must be one of"),
                             ({"candidate_factr": 3}, "unknown strategy option.*'candidate_factr'")]:
        with pytest.raises(SelectionError, match=message):
            select(pool, "coreset", 5, **options)
    no_emb = make_scored_table(np.arange(100), rng.dirichlet(np.ones(3), size=100))
    with pytest.raises(SelectionError,
                       match=r"missing column\(s\) 'embedding', which strategy 'diverse\(entropy\)' needs"):
        select(no_emb, "diverse(entropy)", 5)
    with pytest.raises(SelectionError, match="unknown strategy 'nope'.*diverse\\(STRATEGY\\)"):
        select(pool, "diverse(nope)", 5)
    lab = make_scored_table([1000], rng.dirichlet(np.ones(3), size=1), np.ones((1, 3)), [0])
    with pytest.raises(SelectionError, match="dimension 3, the pool's 8"):
        select(pool, "coreset", 5, labeled=lab)


def test_typiclust_needs_no_probabilities(rng):
    emb, blob, cores = planted_blobs(rng, [70, 40])
    pool = pa.table({"id": np.arange(len(emb)), "embedding": make_scored_table(np.arange(len(emb)), None, emb)
                     .column("embedding")})
    out = select(pool, "typiclust", 2, candidate_factor=len(emb) / 2, metric="l2")
    assert out.column("id").to_pylist() == cores.tolist()


@pytest.mark.ray
def test_ray_engine_selects_the_same_diverse_batch(tmp_path, rng):
    ray = pytest.importorskip("ray")
    import os
    import sys

    from broaden.engines import get_engine

    _, folder, labeled = _parquet_pool(tmp_path, rng)
    os.environ.pop("RAY_ADDRESS", None)  # an in-process instance, never a cluster the user happens to name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with get_engine("ray", shards=3, init_options={"num_cpus": 2}) as engine:
        for strategy in ("coreset", "typiclust", "diverse(entropy)", "badge"):
            local = select(folder, strategy, 25, labeled=labeled, seed=2)
            assert select(folder, strategy, 25, labeled=labeled, seed=2, engine=engine).equals(local), strategy
