"""`broaden evaluate` end to end: JSON keys of DESIGN §5 and the side-by-side table."""
from __future__ import annotations

import json

import numpy as np
from sklearn.metrics import roc_auc_score

from broaden import io
from broaden.cli import main


def _scored(path, seed, n=300):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), n)
    labels = np.where(rng.random(n) < 0.7, probs.argmax(1), rng.integers(0, 3, n)).astype(object)
    labels[:10] = None  # unlabelled rows are skipped
    io.write_table(io.make_scored_table(np.arange(n), probs, None, list(labels)), path)
    return probs, labels


def test_json_output_matches_design_keys(tmp_path, capsys):
    probs, labels = _scored(tmp_path / "a.parquet", 0)
    assert main(["evaluate", str(tmp_path / "a.parquet"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("n", "auc", "f1", "recall_at_precision", "tpr_at_fpr", "multiclass_loss", "max_beta_variance"):
        assert key in out
    assert sorted(out["recall_at_precision"]) == ["0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    assert list(out["tpr_at_fpr"]) == ["0.01"]
    lab = labels[10:].astype(int)
    assert out["n"] == 290
    assert out["auc"] == roc_auc_score(lab != 0, 1 - probs[10:, 0])


def test_table_has_one_row_per_file(tmp_path, capsys):
    _scored(tmp_path / "first.parquet", 1)
    _scored(tmp_path / "second.parquet", 2)
    assert main(["evaluate", str(tmp_path / "first.parquet"), str(tmp_path / "second.parquet")]) == 0
    out = capsys.readouterr().out
    assert "first.parquet" in out and "second.parquet" in out and "R@P90" in out


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    t = io.make_scored_table(np.arange(3), np.full((3, 2), 0.7), None, [0, 1, 1])
    io.write_table(t, tmp_path / "bad.parquet")
    assert main(["evaluate", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.parquet" in err and "sum to" in err and "Traceback" not in err


def test_positive_outside_the_classes_is_one_clear_line(tmp_path, capsys):
    _scored(tmp_path / "a.parquet", 3)
    assert main(["evaluate", str(tmp_path / "a.parquet"), "--positive", "7"]) == 2
    err = capsys.readouterr().err
    assert "a.parquet" in err and "positive classes [7]" in err and "Traceback" not in err
