"""Engines (issue 9): the Ray engine gives exactly the local engine's selection and exact-kNN results,
scoring within float tolerance, and the same results when a worker dies mid-run.

One in-process Ray instance (``ray.init(num_cpus=2)``) serves the whole module. References are the
local engine running the same data and brute-force numpy (sorts, exact dot products).
"""
from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")

from broaden.engines import EngineError, get_engine  # noqa: E402
from broaden.engines.local import LocalEngine  # noqa: E402
from broaden.engines.ray_engine import RayEngine  # noqa: E402
from broaden.lsb.knn.build import build_index  # noqa: E402
from broaden.lsb.knn.ray import build_sharded_index, merge_neighbours  # noqa: E402
from broaden.engines.shards import plan_shards, pool_units  # noqa: E402
from broaden.errors import BroadenError, ScoredTableError  # noqa: E402
from broaden.io import Columns, list_matrix, make_scored_table, matrix_to_list_array, write_table  # noqa: E402
from broaden.select import scores as S  # noqa: E402

pytestmark = pytest.mark.ray
C, D = 4, 16
# Unequal files plus a sub-folder unit, so shards hold one unit, several units, and a folder.
SIZES = {"extra/a.parquet": 400, "extra/b.parquet": 500, "part-0.parquet": 1000, "part-1.parquet": 2500,
         "part-2.parquet": 700, "part-3.parquet": 1800}


@pytest.fixture(scope="module")
def engine():
    os.environ.pop("RAY_ADDRESS", None)  # in-process instance, never a cluster the user happens to name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    eng = get_engine("ray", shards=3, init_options={"num_cpus": 2})
    yield eng
    eng.close()


def probs_with_ties(rng, n):
    """Dirichlet rows, a third of them copied from 5 shared rows (exact score ties across files)."""
    p = rng.dirichlet(np.full(C, 0.5), n)
    shared = rng.dirichlet(np.full(C, 0.5), 5)
    tie = rng.random(n) < 0.33
    p[tie] = shared[rng.integers(0, 5, tie.sum())]
    return p.astype(np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool folder (ids 10000…) with committee columns and clustered embeddings, and a labelled set."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("engines")
    centers = rng.normal(size=(10, D)) * 2
    pool_dir, start = root / "pool", 10_000
    for name, n in SIZES.items():
        x = (centers[rng.integers(0, 10, n)] + 0.6 * rng.normal(size=(n, D))).astype(np.float32)
        table = make_scored_table(np.arange(start, start + n), probs_with_ties(rng, n), x, extra={
            "probs_a": matrix_to_list_array(probs_with_ties(rng, n)),
            "probs_b": matrix_to_list_array(probs_with_ties(rng, n)),
            "weak": matrix_to_list_array(probs_with_ties(rng, n))})
        write_table(table, pool_dir / name)
        start += n
    n_lab = 500
    y = rng.integers(0, C, n_lab)
    x = (centers[rng.integers(0, 10, n_lab)] + 0.6 * rng.normal(size=(n_lab, D))).astype(np.float32)
    # Ids overlap the pool: hw must skip labelled items and relabel suspects that are in the pool.
    labeled = make_scored_table(np.arange(10_300, 10_300 + n_lab), probs_with_ties(rng, n_lab), x, y)
    write_table(labeled, root / "labeled.parquet")
    return pool_dir, root / "labeled.parquet"


def pool_arrays(pool_dir):
    from broaden.io import read_table

    t = read_table(pool_dir)
    return t.column("id").to_numpy(), list_matrix(t.column("probs"), dtype=np.float64), list_matrix(t.column("embedding"))


# ------------------------------------------------------------------------------------------ shards
def test_units_and_shards_follow_row_order(world):
    pool_dir, _ = world
    units = pool_units(pool_dir)
    assert [u.data.name for u in units] == ["extra", "part-0.parquet", "part-1.parquet", "part-2.parquet",
                                            "part-3.parquet"]
    assert [u.rows for u in units] == [900, 1000, 2500, 700, 1800]
    assert [u.offset for u in units] == [0, 900, 1900, 4400, 5100]
    shards = plan_shards(units, shards=3)
    assert [s.rows for s in shards] == [1900, 2500, 2500] and sum(len(s.units) for s in shards) == 5
    assert [u for s in shards for u in s.units] == units
    assert len(plan_shards(units, shard_rows=1)) == len(units)


def test_get_engine_names(engine):
    assert isinstance(get_engine("local"), LocalEngine) and get_engine(engine) is engine
    with pytest.raises(EngineError, match="unknown engine 'spark'"):
        get_engine("spark")


# ------------------------------------------------------------------------------------- selection
def ref_top(scores, ids, n):
    order = np.lexsort((ids, -scores))[:n]
    return ids[order], scores[order]


@pytest.mark.parametrize("string_ids", [False, True])
def test_top_k_equals_local_and_brute_force(engine, world, tmp_path, string_ids):
    pool_dir, _ = world
    if string_ids:  # string ids order by code point, not numerically: "10999" < "11"
        from broaden.io import read_table

        t = read_table(pool_dir)
        t = t.set_column(0, "id", pa.array([str(i // 7) + "-" + str(i) for i in t.column("id").to_pylist()]))
        for i, s in enumerate(range(0, t.num_rows, 1500)):
            write_table(t.slice(s, 1500), tmp_path / f"p{i}.parquet")
        pool_dir = tmp_path
    from broaden.io import read_table

    table = read_table(pool_dir)
    ids = np.asarray(table.column("id").to_pylist())
    p = list_matrix(table.column("probs"), dtype=np.float64)
    excl = ids[::5]
    from broaden.io.ids import IdSet

    def pri(keys, batch):
        return S.entropy(list_matrix(batch.column("probs"), dtype=np.float64))

    got = engine.top_k(pool_dir, 300, Columns(), pri, prob_cols=["probs"], exclude=IdSet(excl))
    want_local = LocalEngine().top_k(pool_dir, 300, Columns(), pri, prob_cols=["probs"], exclude=IdSet(excl))
    keep = ~np.isin(ids, excl)
    want = ref_top(S.entropy(p)[keep], ids[keep], 300)
    for a in (got, want_local):
        assert a[0].tolist() == want[0].tolist()
        np.testing.assert_array_equal(a[1], want[1])
    assert len(np.unique(got[1])) < 300  # the tie block is really exercised


SPECS = [
    ("random", {}), ("least_confident", {}), ("margin", {}), ("entropy", {}),
    ("qbc", {"committee_cols": "probs_a,probs_b"}),
    ("qbc", {"committee_cols": "probs_a,probs_b", "qbc_measure": "kl"}),
    ("hw", {}), ("hw", {"easy_source": "weak", "skip_top": 0.1, "proportions": "0.4,0.3,0.2,0.1"}),
    ("hw", {"dirty_bound": 0.05, "labeled": True}),
    ("lsb", {"labeled": True, "index": "flat", "max_seeds": 40}),
    ("lsb-lt", {"labeled": True, "index": "flat", "max_seeds": 40, "lookalike_threshold": 0.3}),
    ("entropy:0.5,margin:0.3,random:0.2", {}),
    ("lsb:0.3,entropy:0.4,hw:0.3", {"labeled": True, "index": "flat", "max_seeds": 40}),
]


@pytest.mark.parametrize("spec,options", SPECS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(SPECS)])
def test_select_every_strategy_equals_local(engine, world, spec, options):
    from broaden.select import select

    pool_dir, labeled = world
    opts = dict(options)
    if opts.pop("labeled", False):
        opts["labeled"] = str(labeled)
    want = select(pool_dir, spec, 250, exclude=list(range(10_400, 10_700)), seed=3, **opts)
    got = select(pool_dir, spec, 250, exclude=list(range(10_400, 10_700)), seed=3, engine=engine, **opts)
    assert got.num_rows == 250
    assert got.equals(want), (got.slice(0, 5).to_pylist(), want.slice(0, 5).to_pylist())


def test_fold_counts_equal_bincount(engine, world):
    pool_dir, _ = world
    _, p, _ = pool_arrays(pool_dir)

    def step(acc, keys, batch):
        return acc + np.bincount(list_matrix(batch.column("probs")).argmax(1), minlength=C)

    got = engine.fold(pool_dir, Columns(), init=lambda: np.zeros(C, np.int64), step=step, merge=np.add,
                      prob_cols=["probs"])
    np.testing.assert_array_equal(got, np.bincount(p.argmax(1), minlength=C))


def test_bad_rows_and_duplicate_ids_fail_like_local(engine, world, tmp_path):
    pool_dir, _ = world
    from broaden.io import read_table

    t = read_table(pool_dir / "part-0.parquet")
    write_table(t, tmp_path / "dup" / "a.parquet")
    write_table(t.slice(10, 5), tmp_path / "dup" / "b.parquet")  # ids of a.parquet rows 10…14 again
    p = list_matrix(t.column("probs")).copy()
    p[37] = [0.5, 0.5, 0.5, 0.5]
    write_table(t.set_column(t.schema.get_field_index("probs"), "probs", matrix_to_list_array(p)),
                tmp_path / "bad" / "a.parquet")
    pri = lambda keys, batch: keys.astype(float)  # noqa: E731
    for eng in (engine, LocalEngine()):
        with pytest.raises(ScoredTableError, match=r"duplicate id: rows .*a\.parquet row 10 and .*b\.parquet row 0"):
            eng.top_k(tmp_path / "dup", 5, Columns(), pri, prob_cols=["probs"])
        with pytest.raises(ScoredTableError, match=r"bad.a\.parquet: column 'probs' row 37: probabilities sum to 2"):
            eng.top_k(tmp_path / "bad", 5, Columns(), pri, prob_cols=["probs"])
        with pytest.raises(BroadenError, match="missing column"):
            eng.top_k(pool_dir, 5, Columns(), pri, prob_cols=["nope"])


def _die_once(marker: str):
    """Kill this worker process the first time any worker gets here (O_EXCL makes it exactly once)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_fold_worker_is_retried_with_the_same_result(engine, world, tmp_path):
    pool_dir, _ = world
    marker = str(tmp_path / "died")

    def pri(keys, batch):
        _die_once(marker)
        return S.margin(list_matrix(batch.column("probs"), dtype=np.float64)) * -1

    got = engine.top_k(pool_dir, 200, Columns(), pri, prob_cols=["probs"])
    assert Path(marker).exists()  # a worker really died
    ids, p, _ = pool_arrays(pool_dir)
    want = ref_top(-S.margin(p), ids, 200)
    assert got[0].tolist() == want[0].tolist()


# ----------------------------------------------------------------------------------------- kNN
def test_sharded_exact_knn_equals_local_and_brute_force(engine, world):
    pool_dir, _ = world
    ids, _, x = pool_arrays(pool_dir)
    rng = np.random.default_rng(1)
    q = x[rng.choice(len(x), 30, replace=False)] + 0.01 * rng.normal(size=(30, D)).astype(np.float32)
    excl = ids[1::3]
    sharded = build_sharded_index(engine, pool_dir, index="flat", queries=q, k=8, save_index=False)
    assert sharded.info["shards"] == 3 and sharded.info["exact"] and sharded.info["index"] == "flat"
    got = sharded.search(q, 8, exclude=excl)
    local = build_index(pool_dir, index="flat", queries=q, k=8, save_index=False).search(q, 8, exclude=excl)
    np.testing.assert_array_equal(got.positions, local.positions)
    np.testing.assert_array_equal(got.similarity, local.similarity)
    # brute force: cosine over the non-excluded rows
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = qn @ xn.T
    sim[:, np.isin(ids, excl)] = -np.inf
    want = np.argsort(-sim, axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(got.positions, want)
    assert (got.ids == ids[want]).all()


def test_knn_actors_are_reused_and_survive_a_restart(engine, world):
    pool_dir, _ = world
    _, _, x = pool_arrays(pool_dir)
    q = x[:20] + 0.05
    first = build_sharded_index(engine, pool_dir, index="flat", queries=q, k=5, save_index=False)
    before = first.search(q, 5)
    again = build_sharded_index(engine, pool_dir, index="flat", queries=q, k=5, save_index=False)
    assert again is first and again.info["reused"] and again.actors == first.actors
    ray.kill(first.actors[1], no_restart=False)  # the actor process dies; Ray restarts it and it rebuilds
    after = again.search(q, 5)
    np.testing.assert_array_equal(after.positions, before.positions)


def test_sharded_ivf_uses_the_local_backends(engine, world, tmp_path):
    pool_dir, _ = world
    ids, _, x = pool_arrays(pool_dir)
    q = x[::97]
    sharded = build_sharded_index(engine, pool_dir, index="ivf", queries=q, k=5, index_dir=tmp_path / "idx",
                                  index_params={"nlist": 16})
    assert sharded.info["index"] == "ivf" and not sharded.info["exact"]
    assert all(i["factory"] == "IVF16,Flat" for i in sharded.info["shard_info"])
    assert len(list((tmp_path / "idx" / "shards").glob("ivf-cosine-*"))) == 5  # one saved index per unit
    got = sharded.search(q, 5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.argsort(-(xn[::97] @ xn.T), axis=1)[:, :5]
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got.positions, truth)])
    assert recall >= 0.9


def test_merge_neighbours_breaks_ties_by_position():
    sim = np.array([[0.9, 0.5, np.nan, 0.7, 0.9]], np.float32)
    pos = np.array([[8, 3, -1, 4, 2]])
    s, p = merge_neighbours(sim, pos, 6)
    assert p.tolist() == [[2, 8, 4, 3, -1, -1]]
    assert np.isnan(s[0, 4:]).all()


# -------------------------------------------------------------------------------------- scoring
class ClassifierScorer:
    """What ``round start`` runs per batch: the saved classifier's probabilities from the embeddings."""

    def __init__(self, path, marker, device):
        from broaden.models.classifier import EmbeddingClassifier

        self.clf, self.marker = EmbeddingClassifier.load(path), marker

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.marker:
            _die_once(self.marker)
        probs = self.clf.predict_proba(list_matrix(table.column("embedding")))
        return table.select(["id"]).append_column("probs", matrix_to_list_array(np.asarray(probs, np.float32)))


@pytest.mark.parametrize("kill", [False, True])
def test_map_batches_scores_like_local(engine, world, tmp_path, kill):
    from broaden.models.classifier import EmbeddingClassifier

    pool_dir, _ = world
    ids, p, x = pool_arrays(pool_dir)
    clf = EmbeddingClassifier(hidden=(8,), max_epochs=2, seed=0).fit(x[:600], p[:600].argmax(1))
    clf.save(tmp_path / "clf")
    make = functools.partial(ClassifierScorer, str(tmp_path / "clf"), str(tmp_path / "died") if kill else "")
    got = pa.concat_tables(engine.map_batches(make, pool_dir, columns=["id", "embedding"], batch_size=700))
    want = pa.concat_tables(LocalEngine().map_batches(make, pool_dir, columns=["id", "embedding"], batch_size=700))
    assert (tmp_path / "died").exists() == kill
    assert got.column("id").to_pylist() == want.column("id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(list_matrix(got.column("probs")), list_matrix(want.column("probs")), atol=1e-6)
    np.testing.assert_allclose(list_matrix(want.column("probs")), clf.predict_proba(x), atol=1e-6)


def test_core_install_does_not_import_ray():
    import subprocess

    code = ("import sys, broaden, broaden.engines, broaden.engines.local, broaden.select, broaden.lsb; "
            "from broaden.engines import get_engine; get_engine('local'); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_is_not_shipped_to_workers(engine):
    import pickle

    assert isinstance(pickle.loads(pickle.dumps(engine)), LocalEngine)
    assert isinstance(engine, RayEngine)


@pytest.mark.slow
def test_score_command_on_ray_equals_local(engine, tmp_path):
    """``broaden score`` (tiny VLMAE model, audio + frames + text) through each engine, failures included, with
    Monte Carlo dropout passes: their consistent masks make them independent of how Ray batches the items."""
    from broaden.models.score import score

    from broaden.io import read_table
    from broaden.models.config import run_config_from_dict
    from broaden.models.testing import tiny_hf_encoder, tiny_tokenizer, tiny_whisper_config, tone_items
    from broaden.models.train import train

    tiny_tokenizer(tmp_path / "tok")
    tiny_hf_encoder(tmp_path / "bert")
    items = tone_items(tmp_path / "data", n=40, seed=1)
    items = items.set_column(items.schema.get_field_index("audio_path"), "audio_path",
                             pa.array(["missing.wav"] + items.column("audio_path").to_pylist()[1:]))  # one bad item
    data = tmp_path / "data"  # the WAVs and, beside them, the items in two files
    write_table(items.slice(0, 25), data / "a.parquet")
    write_table(items.slice(25), data / "b.parquet")
    model = dict(tokenizer=str(tmp_path / "tok"), hf_path=str(tmp_path / "bert"), width=32, layers=2, heads=2,
                 vl_layers=1, num_frames=2, frame_channels=1, frame_size=[8, 8], patch_size=4, fusion="vlmae",
                 whisper_config=tiny_whisper_config(), att_dim=16, mlp_hidden=16, max_text_length=12)
    train(run_config_from_dict({"out": str(tmp_path / "run"), "data": {"train": str(data / "b.parquet")},
                                "model": model, "train": dict(batch_size=8, epochs=1, eval_fraction=0.25,
                                                              num_threads=1, audio_cache=str(tmp_path / "cache"))}))
    want = score(tmp_path / "run", data, tmp_path / "local.parquet", batch_size=8, show_progress=False, mc_dropout=3)
    got = score(tmp_path / "run", data, tmp_path / "ray.parquet", batch_size=8, show_progress=False, engine=engine,
                mc_dropout=3)
    assert (got.n_scored, got.n_failed) == (want.n_scored, want.n_failed) == (39, 1)
    a, b = read_table(tmp_path / "ray.parquet"), read_table(tmp_path / "local.parquet")
    assert a.schema == b.schema and a.column("id").equals(b.column("id"))
    for col in ("probs", "probs_m0", "probs_m1", "probs_m2", "embedding"):
        np.testing.assert_allclose(list_matrix(a.column(col)), list_matrix(b.column(col)), atol=1e-5)
    assert read_table(got.errors_path).equals(read_table(want.errors_path))

