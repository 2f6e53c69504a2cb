"""Relabel batches in annotation rounds (issue 17 item 5): with `activelab` in the strategy mix a round may
send labelled items again; they are explicit in the batch (relabel = true) and the ledger (items.relabel),
the picks are cleanlab's ActiveLab choice, and the second vote joins the first in the item's label."""
from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
from cleanlab.multiannotator import get_active_learning_scores

from broaden import io
from broaden.rounds import Ledger, Workspace, round_finish, round_import, round_start, status
from tests.test_rounds import CLASSES, make_world, new_workspace


@pytest.fixture
def relabelled(tmp_path):
    """Round 1 labelled by two annotators who disagree on every fifth item (ties), finished anyway; round 2
    with activelab:0.5,entropy:0.5 on a second pool the classifier is sure about (embeddings scaled away from
    the boundaries), so that the contested labelled items, not new ones, are the least certain."""
    world = make_world(tmp_path)
    ws = new_workspace(world, strategy="entropy", budget=30,
                       classifier={"hidden": [32], "max_epochs": 200, "lr": 0.01, "patience": 20})
    round_start(ws, world.pool1)
    ids = [str(i) for i in pq.read_table(ws / "rounds/0001/batch.parquet").column("id").to_pylist()]
    rows = []
    for n, k in enumerate(ids):
        truth = world.oracle[k]
        rows += [(k, "ann1", truth), (k, "ann2", (truth + 1) % len(CLASSES) if n % 5 == 0 else truth)]
    path = world.root / "votes1.csv"
    path.write_text("id,annotator,label\n" + "".join(f"{i},{a},{lab}\n" for i, a, lab in rows))
    round_import(ws, path)
    round_finish(ws, allow_pending=True)
    pool2 = pq.read_table(world.pool2)
    far = io.matrix_to_list_array(io.list_matrix(pool2.column("embedding"), dtype=np.float32) * 4)
    io.write_table(pool2.set_column(pool2.schema.get_field_index("embedding"), "embedding", far),
                   world.root / "pool2-far.parquet")
    start = round_start(ws, world.root / "pool2-far.parquet", strategy="activelab:0.5,entropy:0.5")
    return world, ws, ids, rows, start


def test_relabel_picks_are_activelab_and_explicit(relabelled):
    world, ws, ids, rows, start = relabelled
    batch = pq.read_table(ws / "rounds/0002/batch.parquet")
    picked = [str(i) for i in batch.column("id").to_pylist()]
    strategy, relabel = batch.column("strategy").to_pylist(), batch.column("relabel").to_pylist()
    again = [k for k, r in zip(picked, relabel) if r]
    assert again and set(again) <= set(ids)  # labelled items of round 1, sent again
    assert all(s == "activelab" for k, s, r in zip(picked, strategy, relabel) if r)
    assert not set(ids) & {k for k, s in zip(picked, strategy) if s == "entropy"}
    with Ledger.open(ws / "ledger.sqlite") as led:
        flags = {i["item_key"]: i["relabel"] for i in led.items(2)}
        assert {k for k, f in flags.items() if f} == set(again)
        assert led.round(2)["pool"].endswith("pool-relabel")
    with open(ws / "rounds/0002/export/batch.csv", newline="") as fh:
        exported = {r["id"]: r["relabel"] for r in csv.DictReader(fh)}
    assert {k for k, v in exported.items() if v == "True"} == set(again)

    # The same choice, from cleanlab called directly on the round's pool, the votes and the exclusions.
    pool = io.read_table(ws / "rounds/0002/pool-relabel")
    keys = [str(i) for i in pool.column("id").to_pylist()]
    probs = io.list_matrix(pool.column("probs"), dtype=np.float64)
    blocked = {str(i) for i in pq.read_table(world.labeled).column("id").to_pylist()}
    blocked |= {str(i) for i in pq.read_table(world.eval).column("id").to_pylist()}
    voted = sorted(set(ids))
    annotators = ["ann1", "ann2"]
    wide = np.full((len(voted), 2), np.nan)
    for k, a, lab in rows:
        wide[voted.index(k), annotators.index(a)] = lab
    row_of = {k: i for i, k in enumerate(keys)}
    new = [k for k in keys if k not in blocked and k not in set(voted)]
    scores_voted, scores_new = get_active_learning_scores(wide, probs[[row_of[k] for k in voted]],
                                                          probs[[row_of[k] for k in new]])
    ranked = sorted([*zip(scores_voted, voted), *zip(scores_new, new)], key=lambda t: (t[0], int(t[1])))
    assert [k for k, s in zip(picked, strategy) if s == "activelab"] == [k for _, k in ranked[:15]]


def test_a_second_vote_joins_the_first(relabelled):
    world, ws, ids, rows, start = relabelled
    batch = pq.read_table(ws / "rounds/0002/batch.parquet")
    again = [str(i) for i, r in zip(batch.column("id").to_pylist(), batch.column("relabel").to_pylist()) if r]
    tied = [k for k in again if ids.index(k) % 5 == 0]
    assert tied, "a contested item should be among the relabel picks"
    k = tied[0]
    before = status(ws)["rounds"][0]["tied"]
    (world.root / "votes2.csv").write_text(f"id,annotator,label\n{k},ann3,{world.oracle[k]}\n")
    round_import(ws, world.root / "votes2.csv")
    with Ledger.open(ws / "ledger.sqlite") as led:
        mine = [(v["round"], v["annotator"], v["label"]) for v in led.votes() if v["item_key"] == k]
    assert [(r, a) for r, a, _ in mine] == [(1, "ann1"), (1, "ann2"), (2, "ann3")]  # a second vote, same item
    report = status(ws)
    assert report["rounds"][0]["tied"] == before - 1  # the tie is broken by the relabel vote
    assert report["rounds"][1]["relabel"] == len(again)
    workspace = Workspace(ws)
    with workspace.ledger() as led:
        resolved = workspace.resolve(led).items
        table = workspace.labeled_table(led, include_initial=False)
    assert resolved[(k, 1)] == resolved[(k, 2)] and resolved[(k, 1)].label == world.oracle[k]
    labelled = table.column("id").to_pylist()
    assert labelled.count(k) == 1 and len(labelled) == len(set(labelled))  # one labelled item, not two
    assert table.column("round").to_pylist()[labelled.index(k)] == 1  # with the row it was first selected with


def test_relabel_rows_take_the_pools_own_column_over_selection_provenance():
    """A pool column whose name selection's provenance took (``score``) comes back from ``pool_score``."""
    import pyarrow as pa

    from broaden.rounds.start import _pool_rows

    batch = pa.table({"id": ["a", "b"], "strategy": ["activelab"] * 2, "score": [0.1, 0.2],
                      "pool_score": [7.0, 8.0], "label": [1, 0], "text": ["x", "y"]})
    schema = pa.schema([("id", pa.string()), ("score", pa.float64()), ("label", pa.int64()),
                        ("text", pa.string()), ("extra", pa.int32())])
    rows = _pool_rows(batch, schema, io.DEFAULT_COLUMNS)
    assert rows.schema == schema
    assert rows.to_pydict() == {"id": ["a", "b"], "score": [7.0, 8.0], "label": [None, None], "text": ["x", "y"],
                                "extra": [None, None]}
