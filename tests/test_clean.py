"""Dirty-label elimination: agreement with cleanlab, the kept-share bound, the evaluation-split guard, CLI."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broaden.cli import main
from broaden.io import make_scored_table
from broaden.select.cleaning import (
    CleaningError, bounded_drop_count, check_not_eval_split, clean, label_issue_mask, label_quality,
)


def noisy_set(rng, n=1200, c=4, flip=0.1):
    """Out-of-sample-like probabilities peaked at the true class, with a known share of flipped labels."""
    truth = rng.integers(0, c, size=n)
    alpha = np.ones((n, c))
    alpha[np.arange(n), truth] = 8.0
    probs = np.stack([rng.dirichlet(a) for a in alpha])
    labels = truth.copy()
    flipped = rng.random(n) < flip
    labels[flipped] = (truth[flipped] + rng.integers(1, c, size=flipped.sum())) % c
    return labels, probs, flipped


def test_mask_equals_cleanlab_on_labelled_rows(rng):
    from cleanlab.filter import find_label_issues

    labels, probs, _ = noisy_set(rng)
    unl = rng.random(len(labels)) < 0.2
    with_unlabelled = np.where(unl, -1, labels)
    for method in ("prune_by_noise_rate", "confident_learning", "predicted_neq_given"):
        mask = label_issue_mask(with_unlabelled, probs, method=method)
        ref = find_label_issues(labels[~unl], probs[~unl], filter_by=method)
        assert not mask[unl].any()
        assert (mask[~unl] == ref).all()


def test_recovers_flipped_labels(rng):
    labels, probs, flipped = noisy_set(rng)
    mask = label_issue_mask(labels, probs)
    precision = (mask & flipped).sum() / mask.sum()
    recall = (mask & flipped).sum() / flipped.sum()
    assert precision > 0.8 and recall > 0.5


def test_bounded_drop_count_by_hand():
    # 10 suspects in 100 rows, bound 5 %: dropping 5 leaves 5/95 = 5.3 % (too many), dropping 6 leaves 4/94
    assert bounded_drop_count(10, 100, 0.05) == 6
    assert bounded_drop_count(10, 100, 0.10) == 0
    assert bounded_drop_count(10, 100, None) == 10
    assert bounded_drop_count(10, 100, 0.0) == 10
    assert bounded_drop_count(3, 3, 0.5) == 3


@pytest.mark.parametrize("bound", [0.0, 0.01, 0.03, 0.06, 0.5])
def test_dirty_bound_keeps_suspected_share_under_bound_dropping_worst_first(rng, bound):
    labels, probs, _ = noisy_set(rng)
    n = len(labels)
    suspects = np.flatnonzero(label_issue_mask(labels, probs))
    mask = label_issue_mask(labels, probs, dirty_bound=bound)
    k = int(mask.sum())
    # brute force: the fewest drops that leave at most `bound` of the kept rows suspect
    need = next(j for j in range(len(suspects) + 1) if (len(suspects) - j) <= bound * (n - j) + 1e-12)
    assert k == need
    assert set(np.flatnonzero(mask)) <= set(suspects)
    # the flagged ones are the suspects with the lowest p(given label)
    self_conf = probs[np.arange(n), labels]
    worst = suspects[np.argsort(self_conf[suspects], kind="stable")[:k]]
    assert set(np.flatnonzero(mask)) == set(worst)


def test_bad_inputs(rng):
    p = rng.dirichlet(np.ones(3), size=5)
    with pytest.raises(CleaningError, match="row 2: label 3 is outside 0..2"):
        label_issue_mask(np.array([0, 1, 3, 0, 1]), p)
    with pytest.raises(CleaningError, match="one row per label"):
        label_issue_mask(np.array([0, 1]), p)
    with pytest.raises(CleaningError, match="dirty_bound"):
        label_issue_mask(np.array([0, 1, 2, 0, 1]), p, dirty_bound=1.5)
    with pytest.raises(CleaningError, match="unknown cleaning method"):
        label_issue_mask(np.array([0, 1, 2, 0, 1]), p, method="magic")
    assert not label_issue_mask(np.array([-1, -1, 0, -1, -1]), p).any()


def test_evaluation_split_guard(tmp_path, rng):
    labels, probs, _ = noisy_set(rng, n=60)
    base = make_scored_table(np.arange(60), probs, labels=labels)
    split = ["train"] * 59 + [" Test"]
    with pytest.raises(CleaningError, match="column 'split' row 59 is 'test'"):
        check_not_eval_split(base.append_column("split", pa.array(split)))
    check_not_eval_split(base.append_column("split", pa.array(["train"] * 60)))
    marked = base.replace_schema_metadata({"broaden.split": "validation"})
    with pytest.raises(CleaningError, match="metadata marks it as the 'validation' split"):
        check_not_eval_split(marked)
    for name in ("ag_news-test.parquet", "dev_set.parquet", "labels.val.parquet"):
        pq.write_table(base, tmp_path / name)
        with pytest.raises(CleaningError, match="name marks an evaluation split"):
            clean(tmp_path / name)
    pq.write_table(base, tmp_path / "contest_train.parquet")
    clean(tmp_path / "contest_train.parquet")  # 'contest' is not a split token
    pq.write_table(base.append_column("split", pa.array(["train"] * 60)), tmp_path / "relabelled-test.parquet")
    clean(tmp_path / "relabelled-test.parquet")  # an explicit split column overrides the name


def test_clean_ranks_worst_first_and_cli_writes_it(tmp_path, rng, capsys):
    from cleanlab.rank import get_label_quality_scores

    labels, probs, flipped = noisy_set(rng, n=500)
    ids = np.array([f"doc{i}" for i in range(500)])
    table = make_scored_table(ids, probs, labels=labels, extra={"text": [f"t{i}" for i in range(500)]})
    src = tmp_path / "labeled.parquet"
    pq.write_table(table, src)
    out = clean(src)
    mask = label_issue_mask(labels, probs)
    assert set(out.column("id").to_pylist()) == set(ids[mask].tolist())
    q = get_label_quality_scores(labels, probs)
    pos = {s: i for i, s in enumerate(ids.tolist())}
    got_q = out.column("label_quality").to_numpy()
    np.testing.assert_allclose(got_q, [q[pos[s]] for s in out.column("id").to_pylist()])
    assert (np.diff(got_q) >= 0).all()
    assert out.column("issue_rank").to_pylist() == list(range(1, out.num_rows + 1))
    assert out.column("predicted_label").to_pylist() == [int(probs[pos[s]].argmax()) for s in out.column("id").to_pylist()]
    assert out.column("text").to_pylist() == [f"t{pos[s]}" for s in out.column("id").to_pylist()]

    dest = tmp_path / "issues.parquet"
    assert main(["clean", str(src), "--out", str(dest), "--dirty-bound", "0.02"]) == 0
    written = pq.read_table(dest)
    k = written.num_rows
    assert f"wrote {k} suspected mislabels" in capsys.readouterr().out
    assert (int(mask.sum()) - k) <= 0.02 * (500 - k) + 1e-9
    assert 0 < k < out.num_rows
    assert written.column("id").to_pylist() == out.column("id").to_pylist()[:k]  # the worst k
    evil = tmp_path / "heldout"
    evil.mkdir()
    pq.write_table(table.append_column("split", pa.array(["eval"] * 500)), evil / "x.parquet")
    assert main(["clean", str(evil), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "refusing to clean" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_label_quality_nan_for_unlabelled(rng):
    p = rng.dirichlet(np.ones(3), size=4)
    q = label_quality(np.array([0, -1, 2, 1]), p)
    assert math.isnan(q[1]) and q[0] == pytest.approx(p[0, 0]) and q[2] == pytest.approx(p[2, 2])
