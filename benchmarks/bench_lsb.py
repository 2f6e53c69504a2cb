"""LSB kNN benchmark (issue 4) on clustered 384-d embeddings, k = 10. Not a unit test.

(a) 1M pool, 50k seeds: recall@10 of ``index="auto"`` against exact search, end-to-end (build + search)
    and search-with-the-saved-index time as ratios against exact FAISS flat search run in the same process.
(b) 10M pool (15 GB float32 on disk, 40 Parquet files): end-to-end ``broaden lsb`` (build + search + LT)
    as a subprocess; wall time and peak RSS.

Data: a mixture of 1000 Gaussian clusters with Dirichlet-distributed sizes, generated deterministically
chunk by chunk (one seed per chunk) to /tmp/broaden-bench and reused while the generation parameters are
unchanged. The labelled set comes from the same mixture: each cluster has a class and a difficulty, and
the simulated model errs on an item with its cluster's difficulty, so bad cases concentrate in clusters
(what makes both broadening and the Lookalike Threshold meaningful).

    flock /tmp/broaden-heavy.lock .venv/bin/python benchmarks/bench_lsb.py --part a
    flock /tmp/broaden-heavy.lock .venv/bin/python benchmarks/bench_lsb.py --part b
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from _data import ROOT, cached  # noqa: E402  (sibling module: benchmarks run as scripts)
DIM, CLUSTERS, CLASSES, K = 384, 1000, 4, 10
CHUNK = 250_000


def mixture(seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    weights = rng.dirichlet(np.full(CLUSTERS, 2.0))
    klass = rng.integers(0, CLASSES, CLUSTERS)
    difficulty = rng.beta(1.0, 3.0, CLUSTERS)
    return centers, weights, klass, difficulty


def make_chunk(n: int, chunk_seed: int, start_id: int, labelled: bool) -> pa.Table:
    from broaden.io import matrix_to_list_array

    centers, weights, klass, difficulty = mixture()
    rng = np.random.default_rng([chunk_seed, 12345])
    c = rng.choice(CLUSTERS, size=n, p=weights)
    emb = centers[c] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32)
    y = klass[c]
    wrong = rng.random(n) < difficulty[c]
    pred = np.where(wrong, (y + rng.integers(1, CLASSES, n)) % CLASSES, y)
    alpha = np.full((n, CLASSES), 0.5)
    alpha[np.arange(n), pred] = 6.0
    probs = rng.gamma(alpha)  # normalised gammas = Dirichlet(alpha) rows
    probs /= probs.sum(axis=1, keepdims=True)
    data = {"id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64))}
    if labelled:
        data["label"] = pa.array(y, pa.int64())
    data["probs"] = matrix_to_list_array(probs.astype(np.float32))
    data["embedding"] = matrix_to_list_array(emb)
    return pa.table(data)


def generate(name: str, rows: int, *, labelled: bool, id_base: int, seed_base: int) -> Path:
    spec = {"rows": rows, "labelled": labelled, "id_base": id_base, "seed_base": seed_base, "dim": DIM,
            "clusters": CLUSTERS, "chunk": CHUNK, "version": 2}

    def write(folder: Path) -> None:
        for i, start in enumerate(range(0, rows, CHUNK)):
            table = make_chunk(min(CHUNK, rows - start), seed_base + i, id_base + start, labelled)
            pq.write_table(table, folder / f"part-{i:05d}.parquet", compression="none", row_group_size=65_536)

    return cached(ROOT / name, spec, write)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    from broaden.lsb.knn.calibrate import recall_at_k

    return recall_at_k(found, truth)


def part_a(seeds: int, pool_rows: int) -> None:
    from broaden.io import Columns
    from broaden.lsb import build_index
    from broaden.io import IdSet
    from broaden.lsb.seeds import load_labeled, select_seeds

    pool = generate(f"pool-{pool_rows}", pool_rows, labelled=False, id_base=10**9, seed_base=1000)
    labeled = generate("labeled-300k", 300_000, labelled=True, id_base=0, seed_base=0)
    view = load_labeled(labeled, discrepancy="nominal", require_embedding=True)
    rows = select_seeds(view, seed_threshold=0.5, max_seeds=seeds)
    queries = view.embeddings(Columns())[rows]
    excl = IdSet(view.keys)
    print(f"pool {pool_rows:,} x {DIM}, {len(rows):,} seeds, k={K}", flush=True)

    cache = ROOT / "index-cache-a"
    for f in cache.glob("**/*"):
        if f.is_file():
            f.unlink()

    t0 = time.perf_counter()
    exact = build_index(pool, index="flat", queries=queries, k=K, save_index=False)
    truth = exact.search(queries, K, exclude=excl).positions
    t_exact = time.perf_counter() - t0
    print(f"exact flat (streamed faiss.knn + ResultHeap): {t_exact:.1f} s ({len(rows) / t_exact:.0f} q/s)", flush=True)

    t0 = time.perf_counter()
    auto = build_index(pool, index="auto", queries=queries, k=K, index_dir=cache)
    t_build = time.perf_counter() - t0
    found = auto.search(queries, K, exclude=excl).positions
    t_e2e = time.perf_counter() - t0
    info = {k: v for k, v in auto.info.items() if k != "calibration"}
    print(f"auto chose: {auto.info['index']} — {auto.info['reason']}")
    print(f"auto info: {json.dumps(info)}")
    print(f"calibration trace ({auto.info['calibration']['parameter']}, recall): {auto.info['calibration']['trace']}")
    r_e2e = recall(found, truth)
    print(f"auto end-to-end (build {t_build:.1f} s + search {t_e2e - t_build:.1f} s): {t_e2e:.1f} s; "
          f"recall@{K} vs exact {r_e2e:.4f}", flush=True)

    t0 = time.perf_counter()
    saved = build_index(pool, index="auto", queries=queries, k=K, index_dir=cache)
    t_load = time.perf_counter() - t0
    found2 = saved.search(queries, K, exclude=excl).positions
    t_saved = time.perf_counter() - t0
    assert saved.info.get("reused"), saved.info
    print(f"saved index: load {t_load:.1f} s + search {t_saved - t_load:.2f} s = {t_saved:.1f} s; "
          f"recall@{K} {recall(found2, truth):.4f}")
    print(f"RATIO end-to-end exact/auto: {t_exact / t_e2e:.1f}x (target >= 3)")
    print(f"RATIO search with saved index exact/(load+search): {t_exact / t_saved:.1f}x (target >= 20); "
          f"search only: {t_exact / (t_saved - t_load):.1f}x")
    print(f"RECALL@{K} auto vs exact: {r_e2e:.4f} (target >= 0.95)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")


def run_sampled(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """Run ``cmd``; (result, wall s, peak RSS GB, seconds into the run when the peak was seen)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, at = 0, 0.0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            rss = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            rss = 0
        if rss > peak:
            peak, at = rss, time.perf_counter() - t0
        time.sleep(0.5)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), wall, peak / 2**20, at


def part_b(seeds: int, pool_rows: int, memory_gb: float) -> None:
    import shutil

    pool = generate(f"pool-{pool_rows}", pool_rows, labelled=False, id_base=10**9, seed_base=1000)
    labeled = generate("labeled-300k", 300_000, labelled=True, id_base=0, seed_base=0)
    out = ROOT / "lsb-10m-out.parquet"
    cache = ROOT / "index-cache-b"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "broaden", "lsb", "--labeled", str(labeled), "--pool", str(pool),
           "--out", str(out), "--seeds", str(seeds), "--seed-threshold", "0.5", "--discrepancy", "nominal",
           "--k", str(K), "--lookalike-threshold", "0.5", "--memory-gb", str(memory_gb),
           "--index-dir", str(cache), "--json"]
    print(" ".join(cmd), flush=True)
    on_disk = sum(f.stat().st_size for f in pool.glob("*.parquet")) / 2**30
    for label in ("fresh build", "saved index reused (next round, same pool)"):
        proc, wall, peak, at = run_sampled(cmd)
        if proc.returncode:
            print(proc.stderr[-4000:])
            raise SystemExit(proc.returncode)
        summary = json.loads(proc.stdout)
        summary["index"].pop("calibration", None)
        print(json.dumps(summary, indent=1))
        print(f"10M END-TO-END broaden lsb, {label}: wall {wall:.0f} s, peak RSS {peak:.2f} GB "
              f"(reached {at:.0f} s in; pool {on_disk:.1f} GB on disk)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("a", "b"), required=True)
    ap.add_argument("--seeds", type=int, default=50_000)
    ap.add_argument("--pool-rows", type=int, default=None)
    ap.add_argument("--memory-gb", type=float, default=6.0)
    args = ap.parse_args()
    if args.part == "a":
        part_a(args.seeds, args.pool_rows or 1_000_000)
    else:
        part_b(args.seeds, args.pool_rows or 10_000_000, args.memory_gb)


if __name__ == "__main__":
    main()
