"""ActiveLab "relabel or label new" (issue 17 item 5): every score equals cleanlab's
get_active_learning_scores called directly on the same arrays; the strategy's picks are the lowest scores
over new and annotated items together; annotated rows are sent again only by the relabelling strategy."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from cleanlab.multiannotator import get_active_learning_scores

from broaden.cli import main
from broaden.io import make_scored_table, write_table
from broaden.select import SelectionError, entropy, select
from broaden.select.activelab import ActiveLab

K = 3


def crowd(rng, n=60, annotators=4, single=False):
    """(N, M) labels with NaN, every row labelled at least once (once only when ``single``)."""
    truth = rng.integers(0, K, n)
    wide = np.full((n, annotators), np.nan)
    for i in range(n):
        who = [rng.integers(annotators)] if single else rng.choice(annotators, rng.integers(1, annotators + 1),
                                                                   replace=False)
        for m in who:
            wide[i, m] = truth[i] if rng.random() < 0.7 + 0.07 * m else rng.integers(0, K)
    probs = rng.dirichlet(np.ones(K), n)
    probs[np.arange(n), truth] += 1.0
    return wide, probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("single", [False, True])
def test_scores_equal_cleanlab(rng, single):
    wide, probs = crowd(rng, single=single)
    new = rng.dirichlet(np.ones(K) * 0.7, 200)
    ref_labelled, ref_new = get_active_learning_scores(wide, probs, new)
    ours = ActiveLab(wide, probs)
    np.testing.assert_allclose(ours.labelled, ref_labelled, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.unlabelled(new), ref_new, rtol=1e-12, atol=1e-12)
    # scoring the new items in batches (as the pool streams) gives the same numbers
    np.testing.assert_allclose(np.concatenate([ours.unlabelled(new[:70]), ours.unlabelled(new[70:])]), ref_new)


def test_scores_without_any_votes_equal_cleanlab(rng):
    new = rng.dirichlet(np.ones(K), 50)
    _, ref = get_active_learning_scores(pred_probs_unlabeled=new)
    np.testing.assert_allclose(ActiveLab(np.empty((0, 0)), np.empty((0, K)), K).unlabelled(new), ref, atol=1e-12)


def votes_table(wide, ids, names=("ann0", "ann1", "ann2", "ann3")):
    rows = [(ids[i], names[m], int(wide[i, m])) for i in range(len(wide)) for m in range(wide.shape[1])
            if not np.isnan(wide[i, m])]
    return pa.table({"id": [r[0] for r in rows], "annotator": [r[1] for r in rows], "label": [r[2] for r in rows]})


def world(rng):
    """A pool holding 60 annotated items (ids 0..59; some with a label filled in) and 200 new ones."""
    wide, probs = crowd(rng)
    new = rng.dirichlet(np.ones(K) * 0.05, 200)  # mostly confident: contested labelled items then compete
    ids = np.concatenate([np.arange(60), np.arange(1000, 1200)])
    labels = [int(np.nanmax(wide[i])) if i % 2 else None for i in range(60)] + [None] * 200
    pool = make_scored_table(ids, np.concatenate([probs, new]), labels=labels)
    ref_labelled, ref_new = get_active_learning_scores(wide, probs, new)
    return pool, votes_table(wide, list(range(60))), ids, np.concatenate([ref_labelled, ref_new])


def lowest(scores, ids, k, allowed=None):
    order = sorted((i for i in range(len(ids)) if allowed is None or allowed[i]), key=lambda i: (scores[i], ids[i]))
    return [int(ids[i]) for i in order[:k]]


def test_strategy_picks_the_lowest_scores_over_new_and_annotated_items(rng):
    pool, votes, ids, ref = world(rng)
    out = select(pool, "activelab", 40, annotations=votes)
    expected = lowest(ref, ids, 40)
    assert out.column("id").to_pylist() == expected
    np.testing.assert_allclose(out.column("score").to_numpy(), sorted(ref)[:40], atol=1e-12)
    relabel = dict(zip(out.column("id").to_pylist(), out.column("relabel").to_pylist()))
    assert relabel == {i: i < 60 for i in expected}
    assert 0 < sum(relabel.values()) < 40  # both kinds compete on one scale here
    # annotated rows with a filled label are relabelled too; exclude holds for both kinds
    assert any(i % 2 and i < 60 for i in expected)
    gone = [i for i in expected if i < 60][:1] + [i for i in expected if i >= 1000][:1]
    again = select(pool, "activelab", 40, annotations=votes, exclude=gone)
    assert again.column("id").to_pylist() == lowest(ref, ids, 40, allowed=~np.isin(ids, gone))


def test_other_strategies_of_a_mix_skip_the_annotated_items(rng, tmp_path):
    pool, votes, ids, ref = world(rng)
    unlabelled_pool = pool.set_column(1, "label", pa.nulls(pool.num_rows, pa.int64()))
    out = select(unlabelled_pool, "entropy:0.5,activelab:0.5", 40, annotations=votes)
    strategy = out.column("strategy").to_pylist()
    picked = out.column("id").to_pylist()
    ent = entropy(np.array(pool.column("probs").to_pylist()))
    assert [i for i, s in zip(picked, strategy) if s == "entropy"] == lowest(-ent, ids, 20, allowed=ids >= 1000)
    rest = [i for i, s in zip(picked, strategy) if s == "activelab"]
    assert rest == lowest(ref, ids, 20, allowed=~np.isin(ids, picked[:20]))
    assert out.column("relabel").to_pylist()[:20] == [None] * 20  # entropy reports no relabel column
    # the same from the command line, the votes in a CSV file
    write_table(unlabelled_pool, tmp_path / "pool.parquet")
    pcsv.write_csv(votes, tmp_path / "votes.csv")
    assert main(["select", str(tmp_path / "pool.parquet"), "--strategy", "entropy:0.5,activelab:0.5", "--budget",
                 "40", "--annotations", str(tmp_path / "votes.csv"), "--out", str(tmp_path / "out.parquet")]) == 0
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == picked


def test_bad_annotations_are_named(rng, tmp_path):
    pool, votes, ids, ref = world(rng)
    with pytest.raises(SelectionError, match="no column\\(s\\) 'annotator'"):
        select(pool, "activelab", 5, annotations=votes.drop_columns(["annotator"]))
    stray = pa.concat_tables([votes, pa.table({"id": [5000], "annotator": ["ann0"], "label": [1]})])
    with pytest.raises(SelectionError, match="1 id\\(s\\) that are not in the pool, e.g. 5000"):
        select(pool, "activelab", 5, annotations=stray)
    wrong = votes.set_column(2, "label", pa.array([7] * votes.num_rows, pa.int64()))
    with pytest.raises(SelectionError, match="label 7 of id 0 is outside 0..2"):
        select(pool, "activelab", 5, annotations=wrong)
    with pytest.raises(SelectionError, match="no such file"):
        select(pool, "activelab", 5, annotations=str(tmp_path / "none.csv"))


def test_diverse_activelab_relabels_like_activelab(rng):
    """The diverse wrapper keeps the inner strategy's right to send annotated items again: its candidates
    are ActiveLab's lowest scores over new and annotated items, re-ranked for coverage."""
    pool, votes, ids, ref = world(rng)
    pool = pool.append_column("embedding", pa.array(rng.normal(size=(len(ids), 4)).astype(np.float32).tolist(),
                                                    pa.list_(pa.float32())))
    out = select(pool, "diverse(activelab)", 10, annotations=votes, candidate_factor=4)
    picked = out.column("id").to_pylist()
    assert set(picked) <= set(lowest(ref, ids, 40))  # from ActiveLab's top 4 × 10
    assert any(i < 60 for i in picked)  # annotated items go out again
    assert out.column("relabel").to_pylist() == [i < 60 for i in picked]
