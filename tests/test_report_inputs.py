"""The report on real inputs: a workspace driven through the rounds API, and a real ``simulate`` run.

These check the contract with the producers (the ledger, batch files and metrics of ``round finish``;
the result folder of ``simulate``) and that the report only reads: the workspace is byte-for-byte the
same afterwards.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from broaden import io
from broaden.report import media, report

CLASSES = ["ok", "<script>alert(1)</script>", "bad"]
HOSTILE = '"><img src=x onerror=alert(1)>'
DIM = 8


def _items(rng, ids, centers, media_dir: Path | None):
    n = len(ids)
    y = rng.integers(0, len(CLASSES), n)
    emb = centers[y] + rng.normal(0, 1.6, (n, DIM))
    logits = 0.6 * emb @ centers.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    extra = {"embedding_version": ["v1"] * n}
    if media_dir is not None:
        from PIL import Image

        extra["text"] = [f"item {i} {HOSTILE}" for i in ids]
        extra["image_path"], extra["audio_path"] = [], []
        for i in ids:
            Image.fromarray(np.full((12, 12), i % 256, np.uint8)).save(media_dir / f"{i}.png")
            (media_dir / f"{i}.wav").write_bytes(media.wav_bytes(np.zeros(200), 8000))
            extra["image_path"].append(str(media_dir / f"{i}.png"))
            extra["audio_path"].append(str(media_dir / f"{i}.wav"))
    return io.make_scored_table(np.asarray(ids), p, emb.astype(np.float32), y, extra=extra), y


def build_workspace(root: Path, rounds: int = 2) -> Path:
    """init → (round start → label every item by the oracle → import → finish) × rounds."""
    from broaden.rounds import init, round_finish, round_import, round_start

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1.5, (len(CLASSES), DIM))
    media_dir = root / "media"
    media_dir.mkdir(parents=True)
    labeled, _ = _items(rng, list(range(1, 121)), centers, media_dir)
    ev, _ = _items(rng, list(range(200, 400)), centers, None)
    pool, y = _items(rng, list(range(1000, 1500)), centers, media_dir)
    oracle = dict(zip(map(str, range(1000, 1500)), y.tolist()))
    io.write_table(labeled, root / "labeled.parquet")
    io.write_table(ev.drop_columns(["probs"]), root / "eval.parquet")
    io.write_table(pool.drop_columns(["label"]), root / "pool.parquet")
    ws = root / "ws"
    init(ws, {"class_names": CLASSES, "labeled": str(root / "labeled.parquet"), "eval": str(root / "eval.parquet"),
              "strategy": "entropy:0.5,lsb-lt:0.25,lsb:0.25", "budget": 40, "k": 3, "seed_threshold": 0.4,
              "lookalike_threshold": 0.3, "classifier": {"hidden": [16], "max_epochs": 10}})
    for r in range(1, rounds + 1):
        round_start(ws, root / "pool.parquet")
        with open(ws / f"rounds/{r:04d}/export/batch.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            row["label"] = oracle[row["id"]]
        with open(root / f"labels{r}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        round_import(ws, root / f"labels{r}.csv")
        round_finish(ws)
    return ws


def _digests(folder: Path) -> dict[str, str]:
    # SQLite's -wal/-shm sidecars are excluded: any reader of a WAL-mode database may create them (empty).
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(("-shm", "-wal"))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-ws")
    ws = build_workspace(root)
    before = _digests(ws)
    html = report(ws, root / "out" / "report.html").read_text()
    return ws, html, before


def _section(html: str, sid: str) -> str:
    return re.search(rf'<section[^>]*id="{sid}".*?</section>', html, re.S).group(0)


def _ledger_rows(ws: Path):
    conn = sqlite3.connect(f"file:{ws / 'ledger.sqlite'}?mode=ro", uri=True)
    items = conn.execute("SELECT item_key, round, strategy, pred, lookalike_score, seed_id FROM items").fetchall()
    votes = conn.execute("SELECT item_key, round, label FROM annotations").fetchall()
    conn.close()
    return items, votes


def test_report_leaves_the_workspace_untouched(workspace):
    ws, _, before = workspace
    assert _digests(ws) == before
    wal = ws / "ledger.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0


def test_workspace_yields_and_metrics_match_the_ledger(workspace):
    ws, html, _ = workspace
    items, votes = _ledger_rows(ws)
    label = {}
    for key, rnd, lab in votes:  # one annotator per item here: the vote is the label
        label[(key, rnd)] = lab
    bad, n = Counter(), Counter()
    for key, rnd, strategy, pred, _, _ in items:
        if (key, rnd) in label:
            n[strategy] += 1
            bad[strategy] += int(label[(key, rnd)] != pred)
    table1 = _section(html, "table1")
    for strategy in n:
        row = re.search(rf'{strategy}</th>(.*?)</tr>', table1, re.S).group(1)
        assert f"{(bad[strategy] + 1) / (n[strategy] + 2):.3f}" in row  # Beta(1+bad, 1+good) posterior mean
        assert f"{bad[strategy]} of {n[strategy]} wrong" in row
    table2 = _section(html, "table2")
    for r in (1, 2):
        ev = json.loads((ws / f"rounds/{r:04d}/metrics.json").read_text())["eval"]
        row = re.search(rf'round {r}</th>(.*?)</tr>', table2, re.S).group(1)
        assert f'<span class="mean">{ev["auc"]:.3f}</span>' in row
        assert f'<span class="mean">{ev["macro_f1"]:.3f}</span>' in row
    cm = json.loads((ws / "rounds/0002/metrics.json").read_text())["eval"]["confusion_matrix"]
    shown = [int(v.replace(",", "")) for v in re.findall(r">([\d,]+)</text>", _section(html, "confusion"))]
    assert shown[: len(CLASSES) ** 2] == [v for row in cm for v in row]


def test_workspace_lookalike_and_explorer(workspace):
    ws, html, _ = workspace
    items, votes = _ledger_rows(ws)
    label = {(k, r): lab for k, r, lab in votes}
    lt = [(s, label[(k, r)] != p) for k, r, _, p, s, _ in items if s is not None and (k, r) in label]
    auc = roc_auc_score([b for _, b in lt], [s for s, _ in lt])
    assert f"{auc:.3f}" in _section(html, "lookalike")
    ex = _section(html, "explorer")
    cases = {(r, seed.split(",")[0]) for _, r, _, _, _, seed in items if seed}
    assert ex.count('<tbody class="case"') == len(cases)
    assert ex.count('class="nb-row"') == sum(1 for *_, seed in items if seed)
    assert 'src="data:image/png;base64,' in ex and 'src="data:audio/wav;base64,' in ex
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in ex and HOSTILE not in ex


def test_workspace_curves_and_reliability_from_round_finish(workspace):
    # round finish keeps each round's eval predictions: the curves and reliability diagram are drawn from them,
    # with the AUC and ECE the round recorded in its metrics.
    ws, html, _ = workspace
    curves = _section(html, "curves")
    for metrics in sorted(ws.glob("rounds/*/metrics.json")):
        ev = json.loads(metrics.read_text())["eval"]
        assert f"AUC {ev['auc']:.3f}" in curves and f"ECE {ev['ece']:.3f}" in curves
    assert curves.count('aria-label="reliability diagram"') == 1
    # The stopping signals: two rounds can never be stable (three comparisons needed); κ is plotted.
    assert "<dt>when to stop</dt><dd>keep labelling: predictions still change" in html
    assert "When to stop: agreement with the previous round" in _section(html, "trends")


def test_workspace_curves_from_stored_eval_predictions(workspace, tmp_path):
    import shutil

    ws, _, _ = workspace
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    io.write_table(pa.table({"id": np.arange(60), "label": pa.array(y, pa.int64()),
                             "probs": io.matrix_to_list_array(p)}), copy / "rounds/0001/eval_predictions.parquet")
    curves = _section(report(copy).read_text(), "curves")
    assert "<svg" in curves and f"AUC {roc_auc_score(y != 0, 1 - p[:, 0]):.3f}" in curves


@pytest.mark.slow
def test_report_of_a_real_simulation(tmp_path):
    from broaden.simulate.data import SimData
    from broaden.simulate.runner import simulate

    rng = np.random.default_rng(0)
    n, d, c = 700, 12, 3
    y = rng.integers(0, c, n)
    x = rng.normal(size=(c, d))[y] * 2 + rng.normal(size=(n, d)) * 2
    texts = [f"q {i} <script>alert(1)</script> | t {i}" for i in range(n)]
    data = SimData("toy", np.arange(n), y, x, rng.random(n) < 0.25, c, tuple(CLASSES), "multiclass", texts,
                   {"kind": "pair", "fields": ["query", "title"]})
    out = tmp_path / "sim"
    simulate(data, out=out, budget=60, initial=120, rounds=2, repeats=1, k=3, print_results=False, show_progress=False,
             groups=["Random", "Stat-AL", "Stat-AL+LSB-LT"])
    html = report(out).read_text()
    for sid in ("table1", "table2", "curves", "trends", "lookalike", "explorer", "confusion"):
        assert "Not available" not in _section(html, sid), sid
    assert html.count("<script") == 1  # the page's own; the hostile class names and texts are escaped
