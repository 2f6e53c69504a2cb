"""Time broaden's Label Studio push and pull of one round of N tasks (default 10,000) against a local server.

Starts Label Studio from .venv-ls/ (``make install-dev``) on 127.0.0.1, runs one round of N items through
``round push`` (tasks with predictions and provenance) and times it, and a re-push (nothing to upload).
For the pull, a second project receives the same N tasks already annotated, imported in bulk (one
annotation POST per task runs at ~2 per second on two cores: over an hour for 10,000, which is the
annotators' side, not broaden's); then ``round import --from label-studio`` (N new labels) and a re-pull
(nothing changed) are timed. Prints one JSON line of seconds.

    .venv/bin/python benchmarks/bench_label_studio.py [--n 10000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from label_studio_server import label_studio, unavailable  # noqa: E402

from broaden import io  # noqa: E402
from broaden.rounds import init, round_pull, round_push, round_start  # noqa: E402
from broaden.rounds import Workspace  # noqa: E402
from broaden.rounds.formats import label_studio_tasks, labeling_config  # noqa: E402
from broaden.rounds.labelstudio import IMPORT_CHUNK, Client  # noqa: E402

CLASSES = ["neg", "neu", "pos"]


def make_pool(path: Path, n: int, dim: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    logits = emb[:, :3] * 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ids = np.arange(n)
    extra = {"text": [f"review number {i}: " + "lorem ipsum " * 8 for i in ids],
             "embedding_version": ["v1"] * n}
    return io.write_table(io.make_scored_table(ids, p.astype(np.float32), emb, None, extra=extra), path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    reason = unavailable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory() as tmp, label_studio(Path(tmp) / "ls") as srv:
        os.environ["LABEL_STUDIO_API_KEY"] = srv.token
        pool = make_pool(Path(tmp) / "pool.parquet", args.n + 500)
        ws = Path(tmp) / "ws"
        init(ws, {"class_names": CLASSES, "strategy": "entropy", "budget": args.n})
        t = time.perf_counter()
        round_start(ws, pool)
        start_s = time.perf_counter() - t
        t = time.perf_counter()
        pushed = round_push(ws, url=srv.url, project="bench")
        push_s = time.perf_counter() - t
        assert pushed.uploaded == args.n, pushed
        t = time.perf_counter()
        again = round_push(ws, url=srv.url, project="bench")
        repush_s = time.perf_counter() - t
        assert again.uploaded == 0

        # The same tasks, annotated, in a second project (bulk import: the annotators' side is not timed).
        w = Workspace(ws)
        batch = w.read_batch(1)
        text, media = w.annotator_fields(batch)
        tasks = label_studio_tasks(batch, round=1, class_names=CLASSES, id_col="id", text=text, media=media,
                                   probs_col="probs", model_version="bench")
        for i, task in enumerate(tasks):
            task["annotations"] = [{"result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                "value": {"choices": [CLASSES[i % 3]]}}]}]
        client = Client(srv.url)
        proj, _ = client.project("bench-annotated", create={"title": "bench-annotated",
                                                            "label_config": labeling_config(CLASSES, text, media)})
        t = time.perf_counter()
        for k in range(0, len(tasks), IMPORT_CHUNK):
            client.request("POST", f"/api/projects/{proj['id']}/import", what="bulk import",
                           json=tasks[k:k + IMPORT_CHUNK])
        annotate_s = time.perf_counter() - t
        t = time.perf_counter()
        pulled = round_pull(ws, url=srv.url, project="bench-annotated")
        pull_s = time.perf_counter() - t
        assert pulled.new == args.n, pulled
        t = time.perf_counter()
        assert round_pull(ws, url=srv.url, project="bench-annotated").already_imported
        repull_s = time.perf_counter() - t
    print(json.dumps({"tasks": args.n, "round_start_s": round(start_s, 1), "push_s": round(push_s, 1),
                      "repush_s": round(repush_s, 1), "bulk_import_annotated_s": round(annotate_s, 1),
                      "pull_s": round(pull_s, 1), "repull_s": round(repull_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
