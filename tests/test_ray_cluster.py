"""The Ray engine against a real local cluster (issue 15 item 6), not an in-process ``ray.init``.

A head node and a second worker node are started as separate processes (``ray start --head`` plus
``ray start --address``, each with one CPU, on 127.0.0.1), so tasks and actors land on two raylets and
everything they need crosses process boundaries serialized, as on a real cluster. A driver process
connects to it and runs selection and exact sharded kNN; both must equal the local engine here. The nodes run in their own process group and temp dir and are stopped
by that group's id at teardown (bounded): never ``ray stop``, which would end every Ray on the machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from broaden.io import make_scored_table, write_table  # noqa: E402
from broaden.lsb.knn.build import build_index  # noqa: E402
from broaden.select import select  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([RAY, "start", "--block", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """End the node: its process group (the raylet, GCS and workers it started), TERM then KILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(1)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if RAY is None:
        pytest.skip("the ray command is not installed")
    root = tmp_path_factory.mktemp("raycluster")
    temp = Path("/tmp") / f"broaden-ray-{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = _free_port()
    # Ray 2.60 turns on token authentication for ``ray start --head`` (DESIGN §7); this process imported
    # Ray with it off, so the test cluster runs without it (it listens on 127.0.0.1 only).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = _start(["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false",
                   *common], env, root / "head.log")
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.time() + 90
        worker = None
        while time.time() < deadline:
            if head.poll() is not None:
                pytest.fail(f"ray head exited: {(root / 'head.log').read_text()[-2000:]}")
            probe = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True,
                                   text=True, timeout=30)
            if probe.returncode == 0:
                if worker is None:
                    worker = _start([f"--address={address}", *common], env, root / "worker.log")
                    procs.append(worker)
                elif probe.stdout.count("node_") >= 2:
                    break
            time.sleep(2)
        else:
            pytest.fail("the two-node Ray cluster did not come up in 90 s: "
                        f"{(root / 'head.log').read_text()[-1500:]}")
        yield {"address": address, "env": env}
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("clusterpool")
    start = 0
    for i, n in enumerate((700, 1200, 500, 900)):
        probs = rng.dirichlet(np.full(4, 0.5), n).astype(np.float32)
        emb = rng.normal(size=(n, 8)).astype(np.float32)
        write_table(make_scored_table(np.arange(start, start + n), probs, emb), root / f"part-{i}.parquet")
        start += n
    return root


DRIVER = """
import json, sys
import numpy as np
import ray
from broaden.engines import get_engine
from broaden.lsb.knn.ray import build_sharded_index
from broaden.select import select

address, pool, out = sys.argv[1:4]
with get_engine("ray", address=address, shards=2) as engine:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    table = select(pool, "entropy:0.5,margin:0.3,random:0.2", 120, exclude=list(range(100, 300)), seed=5,
                   engine=engine)
    q = np.random.default_rng(4).normal(size=(25, 8)).astype(np.float32)
    sharded = build_sharded_index(engine, pool, index="flat", queries=q, k=7, save_index=False)
    nb = sharded.search(q, 7, exclude=np.arange(0, 3300, 5))
    np.savez(out + ".npz", positions=nb.positions, similarity=nb.similarity)
    json.dump({"nodes": len(nodes), "cpus": engine.cpus, "ids": table.column("id").to_pylist(),
               "strategy": table.column("strategy").to_pylist(), "score": table.column("score").to_pylist()},
              open(out + ".json", "w"))
"""


@pytest.fixture(scope="module")
def on_cluster(cluster, pool_dir, tmp_path_factory):
    """What a driver process connected to the cluster computed (a fresh process: a Ray client in this one
    may already have run the in-process instance of tests/test_engines.py, and Ray cannot re-point it)."""
    import json

    out = tmp_path_factory.mktemp("driver") / "result"
    done = subprocess.run([sys.executable, "-c", DRIVER, cluster["address"], str(pool_dir), str(out)],
                          env=cluster["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(Path(f"{out}.json").read_text()), np.load(f"{out}.npz")


def test_the_cluster_has_two_nodes(on_cluster):
    info, _ = on_cluster
    assert info["nodes"] == 2 and info["cpus"] == 2


def test_selection_on_the_cluster_equals_the_local_engine(on_cluster, pool_dir):
    info, _ = on_cluster
    want = select(pool_dir, "entropy:0.5,margin:0.3,random:0.2", 120, exclude=list(range(100, 300)), seed=5)
    assert info["ids"] == want.column("id").to_pylist()
    assert info["strategy"] == want.column("strategy").to_pylist()
    assert info["score"] == want.column("score").to_pylist()


def test_sharded_exact_knn_on_the_cluster_equals_local(on_cluster, pool_dir):
    _, knn = on_cluster
    q = np.random.default_rng(4).normal(size=(25, 8)).astype(np.float32)
    local = build_index(pool_dir, index="flat", queries=q, k=7, save_index=False).search(q, 7, exclude=np.arange(0, 3300, 5))
    np.testing.assert_array_equal(knn["positions"], local.positions)
    np.testing.assert_array_equal(knn["similarity"], local.similarity)
