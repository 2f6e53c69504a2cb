"""Several simulated annotators and the ActiveLab group (issue 17 item 5): one annotator changes nothing, the
ActiveLab group relabels through select("activelab"), every item gets at most N votes and never two from one
annotator, consensus beats single votes, and runs are deterministic."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from broaden.simulate import SimData, simulate
from broaden.simulate.annotators import Crowd, Votes
from broaden.simulate.oracle import noise_confusion, oracle_labels
from broaden.simulate.protocol import RepeatRun, SimConfig

CLF = {"hidden": (16,), "max_epochs": 40, "patience": 5, "lr": 0.01}
N, NOISE, BUDGET, INITIAL, ROUNDS = 3, 0.3, 60, 150, 3
GROUPS = ["Random", "Stat-AL", "ActiveLab"]


def clusters(seed=0, n=1000, C=3, d=6) -> SimData:
    """Well-separated classes: the model (CLF trains it well) is right where a noisy annotator is not."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, d)) * 3
    y = rng.integers(0, C, n)
    X = centers[y] + 0.6 * rng.normal(size=(n, d))
    return SimData("clusters", np.array([f"c{i:04d}" for i in range(n)]), y, X, rng.random(n) < 0.2, C,
                   task="multiclass")


def run(out, **kw):
    settings = dict(budget=BUDGET, initial=INITIAL, rounds=ROUNDS, repeats=1, classifier=CLF, label_noise=NOISE,
                    annotators=N, groups=GROUPS, print_results=False, show_progress=False)
    return simulate(clusters(), out=out, **{**settings, **kw})


def frame(out, name):
    return pq.read_table(out / "repeats" / "repeat-000" / f"{name}.parquet").to_pandas()


@pytest.fixture(scope="module")
def crowd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("crowd")
    return out, run(out)


def test_one_annotator_is_the_single_oracle(tmp_path):
    data = clusters(seed=1, n=600)
    settings = dict(budget=30, initial=100, rounds=1, repeats=1, classifier=CLF, label_noise=NOISE,
                    groups=["Random", "Stat-AL"], print_results=False, show_progress=False)
    before = simulate(data, out=tmp_path / "a", **settings)
    after = simulate(data, out=tmp_path / "b", annotators=1, **settings)
    assert "annotators" not in before["config"] and "annotators" not in after["config"]
    assert before["config"]["config_hash"] == after["config"]["config_hash"]
    assert before["table1"] == after["table1"] and before["table2"] == after["table2"]
    for name in ("initial", "selections", "test_predictions"):
        assert frame(tmp_path / "a", name).equals(frame(tmp_path / "b", name))
    # The oracle is the one of a single-annotator run: oracle_labels with the repeat's seed.
    repeat = RepeatRun(data, SimConfig(label_noise=NOISE), [], 0, noise_confusion(NOISE, 3))
    expected = oracle_labels(data.labels, noise_confusion(NOISE, 3), seed=7919)
    expected[data.is_test] = data.labels[data.is_test]
    assert np.array_equal(repeat.given, expected)


def test_crowd_votes_come_in_a_fixed_order_from_independent_annotators():
    truth = np.repeat(np.arange(3), 4000)
    crowd = Crowd(truth, noise_confusion(NOISE, 3), 3, seed=11)
    again = Crowd(truth, noise_confusion(NOISE, 3), 3, seed=11)
    assert np.array_equal(crowd.answers, again.answers) and np.array_equal(crowd.first, again.first)
    rows = np.arange(len(truth))
    who = np.stack([crowd.annotator(rows, k) for k in range(3)])
    assert (np.sort(who, axis=0) == np.arange(3)[:, None]).all()  # each annotator once per item
    for m in range(3):
        assert abs((crowd.answers[m] != truth).mean() - NOISE) < 0.02
    both_wrong = ((crowd.answers[0] != truth) & (crowd.answers[1] != truth)).mean()
    assert abs(both_wrong - NOISE ** 2) < 0.02  # independent errors
    given = crowd.single()
    assert np.array_equal(given, crowd.answer(rows, 0, given))
    votes = Votes.start(crowd, rows[:5])
    for _ in range(2):
        votes.add(rows[:2], given)
    assert votes.counts[:5].tolist() == [3, 3, 1, 1, 1] and votes.full(rows[:5]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="every annotator"):
        votes.add(rows[:1], given)


def test_activelab_relabels_within_n_votes(crowd_run):
    out, results = crowd_run
    assert results["config"]["annotators"] == N and "ActiveLab" in results["groups"]
    sel = frame(out, "selections")
    init = frame(out, "initial")
    votes = frame(out, "votes")
    al = sel[sel.group == "ActiveLab"].astype({"relabel": bool, "annotator": np.int64})
    assert set(al.strategy) == {"activelab"} and al.relabel.any()
    assert sel[sel.group != "ActiveLab"].relabel.isna().all()
    seen = set(init.id)
    for rnd in range(1, ROUNDS + 1):
        picks = al[al["round"] == rnd]
        assert len(picks) == BUDGET and picks.id.is_unique
        assert set(picks[picks.relabel].id) <= seen and not set(picks[~picks.relabel].id) & seen
        seen |= set(picks.id)
        rec = results["annotators"]["ActiveLab"][rnd - 1]
        assert rec["relabels"]["values"] == [int(picks.relabel.sum())]
    # At most N votes per item, never two from one annotator; the selections record the votes cast.
    assert votes.groupby("id").size().max() <= N and not votes.duplicated(["id", "annotator"]).any()
    assert (votes.groupby("id").size() == N).any()
    cast = votes[votes["round"] > 0].sort_values(["round", "id"]).reset_index(drop=True)
    assert cast[["id", "annotator", "label", "relabel"]].equals(
        al.sort_values(["round", "id"]).reset_index(drop=True)[["id", "annotator", "oracle_label", "relabel"]]
        .rename(columns={"oracle_label": "label"}))
    # Paired with the other groups: an item's first vote is the single label they receive.
    first = votes.sort_values("round").drop_duplicates("id").set_index("id").label
    assert (init.set_index("id").oracle_label == first[init.id]).all()
    other = sel[sel.group == "Random"].set_index("id").oracle_label
    shared = other.index.intersection(first.index)
    assert (other[shared] == first[shared]).all()


def test_consensus_beats_single_votes(crowd_run):
    out, results = crowd_run
    last = results["annotators"]["ActiveLab"][-1]
    assert last["resolution"] == {"crowdlab": 1}
    mean = {k: last[k]["mean"] for k in ("consensus_accuracy", "first_vote_accuracy", "multi_consensus_accuracy",
                                         "multi_first_vote_accuracy")}
    assert mean["consensus_accuracy"] > mean["first_vote_accuracy"] + 0.1
    assert mean["multi_consensus_accuracy"] > mean["multi_first_vote_accuracy"]
    # Recomputed from the files: the first vote of every labelled item against the truth.
    votes, init, sel = frame(out, "votes"), frame(out, "initial"), frame(out, "selections")
    truth = {**dict(zip(init.id, init.label)), **dict(zip(sel.id, sel.label))}
    first = votes.sort_values("round").drop_duplicates("id")
    assert last["first_vote_accuracy"]["mean"] == pytest.approx(np.mean([truth[i] == v for i, v in
                                                                          zip(first.id, first.label)]))
    assert last["votes"]["mean"] == len(votes)


def test_deterministic(crowd_run, tmp_path):
    out, results = crowd_run
    again = run(tmp_path)
    for key in ("table1", "table2", "annotators", "rounds"):
        assert again[key] == results[key], key
    for name in ("votes", "selections"):
        assert frame(out, name).equals(frame(tmp_path, name))
    assert json.loads((out / "config.json").read_text())["config_hash"] == again["config"]["config_hash"]


def test_cli_flag(tmp_path, capsys):
    from broaden.cli import main

    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--annotators N" in text and "ActiveLab" in text
