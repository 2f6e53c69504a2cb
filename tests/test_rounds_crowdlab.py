"""Annotator-aware labels (issue 17 item 5): `label_resolution: crowdlab` gives the consensus labels and the
per-annotator quality that cleanlab's CROWDLAB gives when called directly on the same votes and the
probabilities the items were selected with; majority vote stays the default and unchanged."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cleanlab.multiannotator import get_label_quality_multiannotator

from broaden import io
from broaden.cli import main
from broaden.rounds import Workspace, resolve_votes, round_finish, round_import, round_start, status
from broaden.rounds.config import ConfigError
from tests.test_rounds import CLASSES, make_world, new_workspace


@pytest.fixture
def world(tmp_path):
    return make_world(tmp_path)


def crowd_votes(world, ids, seed=0) -> list[tuple[str, str, int]]:
    """Three annotators of different quality; every item gets two or three of them."""
    rng = np.random.default_rng(seed)
    flip = {"careful": 0.05, "hasty": 0.3, "guessing": 0.8}
    rows = []
    for k in ids:
        who = list(flip) if rng.random() < 0.3 else list(rng.choice(list(flip), 2, replace=False))
        for name in who:
            truth = world.oracle[k]
            label = truth if rng.random() >= flip[name] else int(rng.integers(0, len(CLASSES)))
            rows.append((k, name, label))
    return rows


def import_votes(ws, world, rows, name="votes.csv"):
    path = world.root / name
    path.write_text("id,annotator,label\n" + "".join(f"{i},{a},{lab}\n" for i, a, lab in rows))
    return round_import(ws, path)


def cleanlab_reference(ws, rows):
    """cleanlab called directly: the wide label matrix built here with pandas, pred_probs from the batch file."""
    long = pd.DataFrame(rows, columns=["id", "annotator", "label"])
    wide = long.pivot(index="id", columns="annotator", values="label").astype(float)
    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    probs = dict(zip(map(str, batch.column("id").to_pylist()),
                     io.list_matrix(batch.column("probs"), dtype=np.float64)))
    return wide, get_label_quality_multiannotator(wide, np.stack([probs[k] for k in wide.index]), verbose=False)


def started(world, **settings):
    ws = new_workspace(world, **settings)
    round_start(ws, world.pool1)
    ids = [str(i) for i in pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()]
    return ws, ids


def test_crowdlab_consensus_and_annotator_quality_equal_cleanlab(world):
    ws, ids = started(world, label_resolution="crowdlab")
    rows = crowd_votes(world, ids)
    import_votes(ws, world, rows)
    wide, ref = cleanlab_reference(ws, rows)
    expected = dict(zip(wide.index, ref["label_quality"]["consensus_label"].astype(int)))
    workspace = Workspace(ws)
    with workspace.ledger() as ledger:
        consensus = workspace.resolve(ledger)
    assert consensus.method == "crowdlab" and consensus.note is None
    assert {k: r.label for (k, _), r in consensus.items.items()} == expected
    quality = dict(zip(wide.index, ref["label_quality"]["consensus_quality_score"]))
    for (k, _), r in consensus.items.items():
        assert r.quality == pytest.approx(quality[k], abs=1e-12)
    # The majority rule on the same votes leaves ties that CROWDLAB breaks with annotator quality and the model.
    majority = {k: r for (k, _), r in resolve_votes_of(ws).items()}
    assert any(r.tie for r in majority.values())

    report = status(ws)
    stats = ref["annotator_stats"]
    assert report["label_resolution"] == "crowdlab"
    assert [a["annotator"] for a in report["annotators"]] == list(stats.index)  # lowest quality first
    for a in report["annotators"]:
        row = stats.loc[a["annotator"]]
        assert a["quality"] == pytest.approx(row["annotator_quality"], abs=1e-12)
        assert a["agreement_with_consensus"] == pytest.approx(row["agreement_with_consensus"], abs=1e-12)
        assert (a["worst_class"], a["items"]) == (CLASSES[int(row["worst_class"])], row["num_examples_labeled"])
    assert report["annotators"][0]["annotator"] == "guessing" and report["annotators"][-1]["annotator"] == "careful"
    r = report["rounds"][0]
    assert (r["labelled"], r["tied"], r["pending"]) == (40, 0, 0)

    # finish trains on the consensus labels: no tie blocks it, and the labelled table carries them
    round_finish(ws)
    with workspace.ledger() as ledger:
        table = workspace.labeled_table(ledger, include_initial=False)
    assert dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist())) == expected


def resolve_votes_of(ws):
    workspace = Workspace(ws)
    with workspace.ledger() as ledger:
        return resolve_votes(ledger.votes())


def test_majority_stays_the_default_and_unchanged(world):
    ws, ids = started(world)
    rows = crowd_votes(world, ids)
    import_votes(ws, world, rows)
    workspace = Workspace(ws)
    assert workspace.config.label_resolution == "majority"
    with workspace.ledger() as ledger:
        consensus = workspace.resolve(ledger)
        assert consensus.items == resolve_votes(ledger.votes())
    assert (consensus.method, consensus.annotators, consensus.note) == ("majority", None, None)
    # the majority rule, computed here by hand from the same votes
    for k in ids:
        counts = np.bincount([lab for i, _, lab in rows if i == k], minlength=len(CLASSES))
        top = np.flatnonzero(counts == counts.max())
        assert consensus.items[(k, 1)].label == (int(top[0]) if len(top) == 1 else None)
    report = status(ws)
    assert (report["label_resolution"], report["annotators"]) == ("majority", None)


def test_crowdlab_before_it_applies_is_the_majority_and_says_so(world):
    ws, ids = started(world, label_resolution="crowdlab")
    import_votes(ws, world, [(k, "solo", world.oracle[k]) for k in ids[:10]])
    report = status(ws)
    assert report["label_resolution"] == "majority" and report["annotators"] is None
    assert "one annotator" in report["resolution_note"]
    assert report["rounds"][0]["labelled"] == 10


def test_label_resolution_is_checked_and_status_shows_annotators(world, capsys):
    with pytest.raises(ConfigError, match="label_resolution must be one of 'majority', 'crowdlab'.*'mean'"):
        new_workspace(world, name="bad", label_resolution="mean")
    ws, ids = started(world, label_resolution="crowdlab")
    import_votes(ws, world, crowd_votes(world, ids, seed=1))
    assert main(["status", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "annotators by CROWDLAB quality" in out and "guessing" in out and "careful" in out


def test_crowdlab_needs_probabilities_only_once_it_applies(world):
    """A batch without the selecting model's probabilities: one annotator's votes resolve by majority as
    before CROWDLAB applies; a second annotator makes it apply, and the error names the batch and the item."""
    from broaden.rounds.workspace import WorkspaceError

    ws, ids = started(world, label_resolution="crowdlab")
    batch = pq.read_table(ws / "rounds/0001/batch.parquet")
    pq.write_table(batch.drop_columns(["probs"]), ws / "rounds/0001/batch.parquet")
    import_votes(ws, world, [(k, "solo", world.oracle[k]) for k in ids[:10]])
    report = status(ws)
    assert report["label_resolution"] == "majority" and "one annotator" in report["resolution_note"]
    assert report["rounds"][0]["labelled"] == 10
    import_votes(ws, world, [(k, "second", world.oracle[k]) for k in ids[:10]], name="second.csv")
    with pytest.raises(WorkspaceError, match=r"rounds/0001/batch.parquet has none for '\d+'; use label_resolution"):
        status(ws)
