"""Ray engine benchmark (issue 9): local vs Ray wall time and memory on this machine. Not a unit test.

Two jobs, each run once per engine in its own subprocess (so Ray's start-up is inside the measurement):

1. ``select``: entropy top-100k over the 10M-row, 4-class pool of ``bench_select.py`` (10 Parquet files,
   generated once under $BROADEN_BENCH_DIR, default /tmp/broaden-bench, and reused). The two engines
   must choose the same ids (checked).
2. ``knn``: exact (flat) kNN, ``--seeds`` queries, k=10, over the 1M × 384-d pool of ``bench_lsb.py``
   when present (skipped otherwise); positions must match (checked).

Memory is the peak proportional set size (PSS, shared pages split between the processes that map them)
summed over the whole process tree — driver, Ray's GCS/raylet and every worker — sampled every 0.2 s,
because the driver's own RSS says nothing about work done in Ray workers.

    flock /tmp/broaden-heavy.lock .venv/bin/python benchmarks/bench_ray.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(os.environ.get("BROADEN_BENCH_DIR", "/tmp/broaden-bench"))
HERE = Path(__file__).resolve().parent

JOB = r"""
import json, sys, time, numpy as np
t0 = time.perf_counter()
from broaden.engines import get_engine
from broaden.io import Columns
job, engine_name, pool, arg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
engine = get_engine("ray", init_options={"num_cpus": 2}) if engine_name == "ray" else get_engine("local")
if job == "select":
    from broaden.io import list_matrix
    from broaden.select.scores import entropy
    ids, _ = engine.top_k(pool, arg, Columns(), lambda k, b: entropy(list_matrix(b.column("probs"), dtype=np.float64)),
                          prob_cols=["probs"], description="entropy")
    digest = [int(ids.size), int(ids[:1000].sum()), int(ids.sum() % 1_000_003)]
else:
    from broaden.io import read_table, list_matrix
    from broaden.io import Pool
    from broaden.lsb.knn import build_index
    q = Pool.of(pool, Columns()).sample(arg, np.random.default_rng(0))
    kwargs = dict(index="flat", queries=q, k=10, save_index=False, show_progress=False)
    if engine.name == "ray":
        from broaden.lsb.knn.ray import build_sharded_index
        index = build_sharded_index(engine, pool, **kwargs)
    else:
        index = build_index(pool, **kwargs)
    nb = index.search(q, 10, show_progress=False)
    digest = [int(nb.positions.sum()), int(nb.positions[:, 0].sum())]
engine.close()
print(json.dumps({"seconds": time.perf_counter() - t0, "digest": digest}))
"""


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; wall time, peak summed PSS of its process tree, and its JSON output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode}")
    return {"wall_s": time.perf_counter() - t0, "peak_pss_mb": peak[0] / 1024, **json.loads(out.strip().splitlines()[-1])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="select pool rows (default 10M)")
    ap.add_argument("--budget", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, default=256, help="kNN queries (default 256)")
    ap.add_argument("--knn-pool", default=str(ROOT / "pool-1000000"), help="pool with embeddings for the kNN job")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from bench_select import generate

    jobs = [("select", str(generate(args.rows)), args.budget)]
    if (Path(args.knn_pool) / "_DONE.json").exists():
        jobs.append(("knn", args.knn_pool, args.seeds))
    else:
        print(f"knn: skipped, no pool at {args.knn_pool} (run benchmarks/bench_lsb.py first)")
    ok = True
    for job, pool, arg in jobs:
        res = {e: measure([sys.executable, "-c", JOB, job, e, pool, str(arg)]) for e in ("local", "ray")}
        same = res["local"]["digest"] == res["ray"]["digest"]
        ok &= same
        for e, r in res.items():
            print(f"{job:6s} {e:5s}: wall {r['wall_s']:7.1f} s (in-process {r['seconds']:7.1f} s), "
                  f"peak PSS of the process tree {r['peak_pss_mb']:7.0f} MB")
        print(f"{job:6s} ray/local: wall {res['ray']['wall_s'] / res['local']['wall_s']:.2f}x, "
              f"memory {res['ray']['peak_pss_mb'] / res['local']['peak_pss_mb']:.2f}x; same result: {same}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
