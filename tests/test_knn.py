"""kNN backends (issue 4): exact search equals numpy brute force, approximate ones meet the recall target,
saved indexes are reused only while the pool is unchanged, `auto` weighs its options."""
from __future__ import annotations

import os

import faiss
import numpy as np
import pyarrow as pa
import pytest

from broaden.errors import ScoredTableError
from broaden.io import make_scored_table, write_table
from broaden.lsb import BACKENDS, build_index
from broaden.lsb.knn import exact as knn_mod
from broaden.lsb.knn.auto import choose
from broaden.lsb.knn.calibrate import recall_at_k


def clustered(rng, n, d=24, clusters=40, spread=0.35, centers=None):
    centers = rng.normal(size=(clusters, d)) if centers is None else centers
    return (centers[rng.integers(0, len(centers), n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


def brute_force(q, x, k, metric="cosine", allowed=None):
    """Independent reference: full similarity matrix in numpy (fine at test sizes), ties by position."""
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        q64 /= np.maximum(np.linalg.norm(q64, axis=1, keepdims=True), 1e-30)
        x64 /= np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), 1e-30)
        sim = q64 @ x64.T
    else:
        sim = -np.sqrt(np.maximum(((q64[:, None, :] - x64[None]) ** 2).sum(-1), 0))
    if allowed is not None:
        sim[:, ~allowed] = -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


def write_pool(path, ids, x, files=3):
    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(ids)), files)):
        write_table(make_scored_table(np.asarray(ids)[part], embedding=x[part]), path / f"part-{i}.parquet")
    return path


@pytest.fixture
def pool_data(rng):
    centers = rng.normal(size=(40, 24))
    x = clustered(rng, 6000, centers=centers)
    q = clustered(rng, 300, centers=centers)
    ids = np.array([f"item-{i:05d}" for i in range(len(x))])
    return ids, x, q


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_flat_equals_numpy_brute_force_across_files_and_blocks(tmp_path, pool_data, metric):
    ids, x, q = pool_data
    pool = write_pool(tmp_path / "pool", ids, x)
    index = build_index(pool, index="flat", metric=metric, queries=q, k=7, save_index=False)
    res = index.search(q, 7, batch_size=1000)  # 6 blocks over 3 files, merged by the heap
    ref_idx, ref_sim = brute_force(q, x, 7, metric)
    np.testing.assert_array_equal(res.ids, ids[ref_idx])
    np.testing.assert_allclose(res.similarity, ref_sim, rtol=1e-4, atol=1e-4)


def test_flat_streams_blocks_never_the_whole_pool(tmp_path, pool_data, monkeypatch):
    ids, x, q = pool_data
    seen = []
    real = faiss.knn

    def spy(xq, xb, k, metric=faiss.METRIC_L2):
        seen.append(len(xb))
        return real(xq, xb, k, metric=metric)

    monkeypatch.setattr(knn_mod.faiss, "knn", spy)
    index = build_index(make_scored_table(ids, embedding=x), index="flat", save_index=False)
    res = index.search(q, 5, batch_size=500)
    assert max(seen) <= 500 and sum(seen) == len(x)
    np.testing.assert_array_equal(res.ids, ids[brute_force(q, x, 5)[0]])


def test_exclusion_by_external_id_and_padding(pool_data):
    ids, x, q = pool_data
    table = make_scored_table(ids, embedding=x)
    banned = ids[::3]
    allowed = ~np.isin(ids, banned)
    ref_idx, _ = brute_force(q, x, 6, allowed=allowed)
    for kind in ("flat", "ivf"):
        index = build_index(table, index=kind, queries=q, k=6, save_index=False, target_recall=0.999)
        res = index.search(q, 6, exclude=banned)
        assert not np.isin(res.ids, banned).any()
        if kind == "flat":
            np.testing.assert_array_equal(res.ids, ids[ref_idx])
    tiny = make_scored_table(np.arange(4), embedding=x[:4])
    res = build_index(tiny, index="flat").search(q[:2], 6, exclude=[0])
    assert (res.positions[:, 3:] == -1).all() and set(res.ids[0, :3]) == {1, 2, 3}


@pytest.mark.parametrize("kind,params", [("ivf", {"codec": "Flat"}), ("ivf", {"codec": "SQ8"}), ("hnsw", {})])
def test_approximate_indexes_reach_recall_target(tmp_path, pool_data, kind, params):
    ids, x, q = pool_data
    index = build_index(make_scored_table(ids, embedding=x), index=kind, queries=q[:150], k=10,
                        index_params=params, target_recall=0.95, save_index=False)
    res = index.search(q[150:], 10)  # queries the calibration never saw
    truth = brute_force(q[150:], x, 10)[0]
    assert recall_at_k(res.positions, truth) >= 0.95
    assert index.info["calibration"]["reached"] and index.info["calibration"]["recall"] >= 0.95
    assert index.info["params"]["codec" if kind == "ivf" else "M"] == params.get("codec", 32)


def test_ivfpq_reports_recall_it_actually_gets(pool_data):
    ids, x, q = pool_data
    # 4-bit sub-quantisers keep the PQ training small enough for a unit test
    index = build_index(make_scored_table(ids, embedding=x), index="ivfpq", queries=q, k=10, save_index=False,
                        index_params={"codec": "PQ6x4"})
    cal = index.info["calibration"]
    truth = brute_force(q, x, 10)[0]
    measured = recall_at_k(index.search(q, 10).positions, truth)
    assert abs(measured - cal["recall"]) < 0.05  # calibration sample = 256 of these 300 queries
    assert cal["reached"] == ("warning" not in index.info)


def test_saved_index_reused_then_rebuilt_when_pool_changes(tmp_path, pool_data):
    ids, x, q = pool_data
    pool = write_pool(tmp_path / "pool", ids, x)
    cache = tmp_path / "cache"
    first = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache)
    assert first.info["reused"] is False and os.path.isdir(first.info["index_path"])
    again = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache)
    assert again.info["reused"] is True
    np.testing.assert_array_equal(again.search(q, 5).positions, first.search(q, 5).positions)

    x2 = x[::-1].copy()  # same rows, different order: positions of the old index would be wrong
    write_pool(tmp_path / "pool", ids, x2)
    fresh = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache)
    assert fresh.info["reused"] is False
    res = fresh.search(q, 5)
    truth = brute_force(q, x2, 5)[0]
    assert recall_at_k(res.positions, truth) >= 0.95
    np.testing.assert_array_equal(res.ids[res.positions == truth], ids[truth][res.positions == truth])
    assert len(list(cache.iterdir())) == 1  # the stale entry is gone


def test_reused_index_is_recalibrated_for_a_new_recall_target_or_k(tmp_path, pool_data):
    ids, x, q = pool_data
    pool = write_pool(tmp_path / "pool", ids, x)
    cache = tmp_path / "cache"
    loose = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache, target_recall=0.5,
                        index_params={"nlist": 64})
    assert loose.info["reused"] is False and loose.info["calibration"]["target"] == 0.5
    strict = build_index(pool, index="ivf", queries=q, k=10, index_dir=cache, target_recall=0.99,
                         index_params={"nlist": 64})
    assert strict.info["reused"] is True  # same index file, searched with a breadth measured for k=10, 0.99
    assert strict.info["calibration"]["target"] == 0.99 and strict.info["calibration"]["k"] == 10
    assert strict.breadth > loose.breadth
    truth = brute_force(q, x, 10)[0]
    assert recall_at_k(strict.search(q, 10).positions, truth) >= 0.98
    same = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache, target_recall=0.5,
                       index_params={"nlist": 64})
    assert same.info["reused"] is True and same.breadth == loose.breadth


def test_index_params_and_metric_errors_are_broaden_errors(pool_data):
    from broaden.errors import BroadenError

    ids, x, q = pool_data
    table = make_scored_table(ids, embedding=x)
    for kind, params, msg in [("ivf", {"foo": 3}, "unknown ivf index parameter.*foo.*nlist, codec"),
                              ("ivf", {"nlist": 0}, "nlist must be a positive integer"),
                              ("ivf", {"nlist": 10_000}, "nlist=10000 exceeds the pool's 6000 rows"),
                              ("ivf", {"codec": "XYZ"}, "FAISS rejects index 'IVF.*,XYZ'"),
                              ("hnsw", {"M": "many"}, "M must be a positive integer")]:
        with pytest.raises(BroadenError, match=msg):
            build_index(table, index=kind, queries=q, k=5, index_params=params, save_index=False)
    with pytest.raises(BroadenError, match="unknown metric 'dot'"):
        build_index(table, index="flat", metric="dot")


def test_saved_index_default_location_is_beside_the_pool(tmp_path, pool_data):
    ids, x, q = pool_data
    pool = tmp_path / "pool.parquet"
    write_table(make_scored_table(ids, embedding=x), pool)
    index = build_index(pool, index="hnsw", queries=q[:50], k=5)
    assert index.info["index_path"].startswith(str(tmp_path / "pool.parquet.lsb-index"))


def test_dimension_mismatch_is_a_clear_error(pool_data):
    ids, x, q = pool_data
    with pytest.raises(ScoredTableError, match="dimension mismatch.*23.*24"):
        build_index(make_scored_table(ids, embedding=x), queries=q[:, :23])


def test_auto_weighs_build_cost_queries_memory_and_reuse():
    assert choose(5_000, 384, n_queries=50_000, memory_gb=8, cached={}).backend == "flat"
    assert choose(1_000_000, 384, n_queries=100, memory_gb=8, cached={}).backend == "flat"
    big = choose(1_000_000, 384, n_queries=50_000, memory_gb=8, cached={})
    assert big.backend == "ivf" and big.estimates["ivf"] * 3 < big.estimates["flat"]
    ten_m = BACKENDS["ivf"].default_params(10_000_000, 384, memory_gb=6, n_queries=50_000)
    assert ten_m["codec"] == "SQ8"  # float32 IVF-Flat (15 GB) does not fit 6 GB
    assert choose(10_000_000, 384, n_queries=50_000, memory_gb=1, cached={}).backend == "ivfpq"
    saved = {"ivf": {"params": {"nlist": 1024, "codec": "Flat"}}}
    reuse = choose(1_000_000, 384, n_queries=2_000, memory_gb=8, cached=saved)
    assert reuse.backend == "ivf" and "saved" in reuse.reason


def test_capabilities_are_declared():
    assert BACKENDS["flat"].capabilities.exact and not BACKENDS["flat"].capabilities.saveable
    for name in ("ivf", "hnsw", "ivfpq"):
        caps = BACKENDS[name].capabilities
        assert not caps.exact and caps.saveable and caps.breadth in ("nprobe", "efSearch")


def test_recall_at_k_by_hand():
    found = np.array([[1, 2, 3], [4, 5, -1]])
    truth = np.array([[3, 2, 9], [4, 6, 7]])
    assert recall_at_k(found, truth) == pytest.approx(3 / 6)


def test_unknown_index_kind(pool_data):
    ids, x, _ = pool_data
    with pytest.raises(ValueError, match="unknown index 'annoy'"):
        build_index(pa.table({"id": ids[:10]}).append_column(
            "embedding", make_scored_table(ids[:10], embedding=x[:10]).column("embedding")), index="annoy")


def _entry(index) -> "os.PathLike":
    from pathlib import Path

    return Path(index.info["index_path"])


@pytest.mark.parametrize("target", ["index.faiss", "ids.arrow"])
def test_same_size_tampered_index_is_detected_and_rebuilt(tmp_path, pool_data, target):
    """Issue 13: the saved index is checked by content (SHA-256 recorded at save time), not by size."""
    ids, x, q = pool_data
    pool = write_pool(tmp_path / "pool", ids, x)
    cache = tmp_path / "cache"
    first = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache)
    expected = first.search(q, 5).positions
    path = _entry(first) / target
    data = bytearray(path.read_bytes())
    if target == "ids.arrow":  # swap two ids: same size, wrong ids for two positions
        a, b = data.find(b"item-00001"), data.find(b"item-00002")
        data[a:a + 10], data[b:b + 10] = data[b:b + 10], data[a:a + 10]
    else:  # scramble the stored vectors' bytes in the middle of the file
        mid = len(data) // 2
        data[mid:mid + 4096] = bytes(reversed(data[mid:mid + 4096]))
    assert len(data) == path.stat().st_size
    path.write_bytes(bytes(data))

    again = build_index(pool, index="ivf", queries=q, k=5, index_dir=cache)
    assert again.info["reused"] is False
    assert target in again.info["index_warning"] and "checksum" in again.info["index_warning"]
    np.testing.assert_array_equal(again.search(q, 5).positions, expected)
    assert build_index(pool, index="ivf", queries=q, k=5, index_dir=cache).info["reused"] is True  # healed


def test_unreadable_saved_index_is_rebuilt_not_a_traceback(tmp_path, pool_data):
    """A damaged index file whose digest still matches (e.g. written damaged) is rebuilt with a warning."""
    import json

    from broaden.lsb.knn.store import file_digest

    ids, x, q = pool_data
    pool = write_pool(tmp_path / "pool", ids, x)
    cache = tmp_path / "cache"
    first = build_index(pool, index="hnsw", queries=q[:50], k=5, index_dir=cache)
    folder = _entry(first)
    size = (folder / "index.faiss").stat().st_size
    (folder / "index.faiss").write_bytes(b"\0" * size)
    meta = json.loads((folder / "meta.json").read_text())
    meta["digests"]["index.faiss"] = file_digest(folder / "index.faiss")
    (folder / "meta.json").write_text(json.dumps(meta))
    again = build_index(pool, index="hnsw", queries=q[:50], k=5, index_dir=cache)
    assert again.info["reused"] is False and "unreadable" in again.info["index_warning"]
    np.testing.assert_array_equal(again.search(q[:50], 5).positions, first.search(q[:50], 5).positions)


def test_lsb_cli_reports_a_rebuilt_tampered_index(tmp_path, pool_data, capsys):
    from broaden.cli import main

    ids, x, q = pool_data
    pool = write_pool(tmp_path / "pool", ids, x)
    rng = np.random.default_rng(1)
    lab = write_table(make_scored_table([f"lab-{i}" for i in range(50)], rng.dirichlet(np.ones(3), 50), q[:50],
                                        rng.integers(0, 3, 50)), tmp_path / "lab.parquet")
    argv = ["lsb", "--labeled", str(lab), "--pool", str(pool), "--out", str(tmp_path / "o.parquet"), "--index",
            "ivf", "--seed-threshold", "0.1", "--index-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    entry = next((tmp_path / "cache").iterdir())
    data = bytearray((entry / "index.faiss").read_bytes())
    data[-200:-100] = bytes(100)
    (entry / "index.faiss").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: saved ivf index" in out and "checksum mismatch" in out and "reused" not in out
