"""Selection benchmark (issue 3): ``broaden select --strategy entropy --budget 100000`` on a 10M-row,
4-class pool, against a pandas read-all-then-sort baseline measured in the same run. Not a unit test.

Both run as separate subprocesses under ``/usr/bin/time`` (wall time and peak RSS of exactly that
process). The baseline reads the whole pool into a DataFrame, scores entropy, sorts by (score desc,
id asc) and writes the top rows; the two selections must contain the same ids (checked). Targets: at
least 3× faster than the baseline, peak RSS under 1.5 GB. HW batch mining of the same budget is timed too
(informational).

Diversity (issue 17, ``--diverse``): the same pool with an ``embedding`` column (``--dim`` floats per row,
drawn around 1,000 centers) is generated beside it; plain ``entropy`` and each diverse strategy
(default ``diverse(entropy)`` and ``coreset``, each with its top-10·budget candidate pre-filter) select the
same budget from it, and their wall time and peak RSS are printed as ratios to that entropy run.

The pool (10 Parquet files × 1M rows: ``id`` int64, ``label`` all null, ``probs`` list<float32>[4]) is
generated once, deterministically, under $BROADEN_BENCH_DIR (default /tmp/broaden-bench) and reused.

    flock /tmp/broaden-heavy.lock .venv/bin/python benchmarks/bench_select.py
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from _data import ROOT, cached  # noqa: E402  (sibling module: benchmarks run as scripts)
CLASSES = 4
FILES = 10

BASELINE = r"""
import sys, numpy as np, pandas as pd
pool, out, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
df = pd.read_parquet(pool)
p = np.stack(df["probs"].to_numpy()).astype(np.float64)
with np.errstate(divide="ignore", invalid="ignore"):
    df["score"] = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
top = df.sort_values(["score", "id"], ascending=[False, True]).head(budget)
top.to_parquet(out)
"""


def generate(rows: int) -> Path:
    spec = {"rows": rows, "classes": CLASSES, "files": FILES, "version": 1}

    def write(folder: Path) -> None:
        per = -(-rows // FILES)
        for i, start in enumerate(range(0, rows, per)):
            n = min(per, rows - start)
            rng = np.random.default_rng([i, 2024])
            # A peaked Dirichlet per row (the predicted class varies), so entropies spread over 0 … log 4.
            alpha = np.full((n, CLASSES), 0.4)
            alpha[np.arange(n), rng.integers(0, CLASSES, n)] = 4.0
            probs = rng.gamma(alpha)
            probs /= probs.sum(axis=1, keepdims=True)
            flat = pa.array(probs.astype(np.float32).ravel())
            offsets = pa.array(np.arange(0, (n + 1) * CLASSES, CLASSES, dtype=np.int32))
            table = pa.table({
                "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "label": pa.nulls(n, pa.int64()),
                "probs": pa.ListArray.from_arrays(offsets, flat),
            })
            pq.write_table(table, folder / f"part-{i:03d}.parquet", compression="zstd")

    return cached(ROOT / f"select-pool-{rows}", spec, write)


def generate_embedded(rows: int, dim: int) -> Path:
    """The pool of :func:`generate` (same ids and probabilities) plus an ``embedding`` column: float32
    vectors around 1,000 random centers, so a batch can be spread over clusters or not."""
    spec = {"rows": rows, "classes": CLASSES, "files": FILES, "dim": dim, "version": 1}
    source = generate(rows)

    def write(folder: Path) -> None:
        centers = np.random.default_rng(2025).normal(size=(1000, dim)).astype(np.float32) * 3
        for i, f in enumerate(sorted(source.glob("*.parquet"))):
            table = pq.read_table(f)
            rng = np.random.default_rng([i, 2025])
            n = table.num_rows
            emb = centers[rng.integers(0, len(centers), n)] + rng.normal(size=(n, dim)).astype(np.float32)
            offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
            table = table.append_column("embedding", pa.ListArray.from_arrays(offsets, pa.array(emb.ravel())))
            pq.write_table(table, folder / f.name, compression="zstd")

    return cached(ROOT / f"select-pool-emb-{rows}-{dim}", spec, write)


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one subprocess, from /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", tf.name, *cmd], check=True,
                       stdout=subprocess.DEVNULL)
        wall, rss_kb = tf.read().split()[-2:]
    return float(wall), float(rss_kb) / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--budget", type=int, default=100_000)
    ap.add_argument("--hw", action=argparse.BooleanOptionalAction, default=True,
                    help="also time HW batch mining of the same budget (informational; no baseline)")
    ap.add_argument("--diverse", default="diverse(entropy),coreset",
                    help="diverse strategies timed against plain entropy on the pool with embeddings "
                    "(comma-separated; '' to skip; default %(default)s)")
    ap.add_argument("--dim", type=int, default=32, help="embedding dimension of that pool (%(default)s)")
    args = ap.parse_args()
    pool = generate(args.rows)
    out_dir = ROOT / "select-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    ours_out, base_out = out_dir / "broaden.parquet", out_dir / "pandas.parquet"

    ours = measure([sys.executable, "-m", "broaden", "select", str(pool), "--strategy", "entropy",
                    "--budget", str(args.budget), "--out", str(ours_out)])
    base = measure([sys.executable, "-c", BASELINE, str(pool), str(base_out), str(args.budget)])

    a = pq.read_table(ours_out, columns=["id"]).column("id").to_numpy()
    b = pq.read_table(base_out, columns=["id"]).column("id").to_numpy()
    same_set = set(a.tolist()) == set(b.tolist())
    same_order = bool(np.array_equal(a, b))
    speedup = base[0] / ours[0]
    print(f"pool: {args.rows:,} rows × {CLASSES} classes in {FILES} Parquet files; budget {args.budget:,}")
    print(f"broaden select  wall {ours[0]:7.2f} s   peak RSS {ours[1]:8.0f} MB")
    print(f"pandas baseline wall {base[0]:7.2f} s   peak RSS {base[1]:8.0f} MB")
    print(f"speed-up {speedup:.2f}x (target >= 3x: {'PASS' if speedup >= 3 else 'FAIL'}); "
          f"RSS ratio {ours[1] / base[1]:.2f}; broaden RSS {ours[1] / 1024:.2f} GB "
          f"(target < 1.5 GB: {'PASS' if ours[1] < 1536 else 'FAIL'})")
    print(f"same selected ids as baseline: {same_set}; same order: {same_order}")
    if args.hw:
        hw = measure([sys.executable, "-m", "broaden", "select", str(pool), "--strategy", "hw", "--budget",
                      str(args.budget), "--easy-share", "0.2", "--skip-top", "0.01", "--out", str(out_dir / "hw.parquet")])
        print(f"broaden select --strategy hw (easy 20 %, skip top 1 %) wall {hw[0]:7.2f} s   peak RSS {hw[1]:8.0f} MB")
    diverse = [s.strip() for s in args.diverse.split(",") if s.strip()]
    if diverse:
        embedded = generate_embedded(args.rows, args.dim)
        print(f"diversity: the same pool with {args.dim}-d embeddings; budget {args.budget:,}, "
              f"candidates 10 × budget")

        def run(strategy: str) -> tuple[float, float]:
            return measure([sys.executable, "-m", "broaden", "select", str(embedded), "--strategy", strategy,
                            "--budget", str(args.budget), "--out", str(out_dir / "diverse.parquet")])

        plain = run("entropy")
        print(f"  {'entropy':<18} wall {plain[0]:7.2f} s   peak RSS {plain[1]:8.0f} MB")
        for strategy in diverse:
            t, rss = run(strategy)
            print(f"  {strategy:<18} wall {t:7.2f} s   peak RSS {rss:8.0f} MB   "
                  f"({t / plain[0]:.2f}x the time, {rss / plain[1]:.2f}x the peak RSS of entropy)")
    return 0 if same_set else 1


if __name__ == "__main__":
    sys.exit(main())
