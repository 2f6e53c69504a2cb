"""Several simulated annotators (``--annotators N``) and the votes of the ``ActiveLab`` group (issue 17).

Each annotator m has its own independent noisy answers, drawn once per repeat like the single oracle's
(:func:`.oracle.oracle_labels` with its own seed). Every item has a fixed annotator order: its k-th vote
comes from annotator ``(first + k) mod N``, ``first`` drawn once per repeat. The first vote is the single
label every other group receives (``RepeatRun.given``), so groups stay paired; only a relabelling group
(ActiveLab) asks for the second, third, … vote, and an annotator never votes twice on an item (an item with
N votes cannot be relabelled again).

The ActiveLab group trains on consensus labels from :func:`broaden.rounds.resolve.resolve_crowdlab`, the
code behind ``label_resolution: crowdlab``: CROWDLAB once an item has two votes, majority vote (a single
vote is that vote) before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from broaden.simulate.oracle import oracle_labels

ANNOTATOR_SEED_STRIDE = 104_729  # annotator m > 0 draws with seed + m × stride (annotator 0: the single oracle's)
#: What the repeat record holds per ActiveLab group and round (results.json ``annotators``).
ANNOTATOR_FIELDS = ("relabels", "votes", "multi_voted", "consensus_accuracy", "first_vote_accuracy",
                    "multi_consensus_accuracy", "multi_first_vote_accuracy")


class Crowd:
    """The N annotators of one repeat: ``answers[m, i]`` is annotator m's label of item i."""

    def __init__(self, truth: np.ndarray, confusion: np.ndarray | None, n: int, seed: int):
        self.n = int(n)
        self.answers = np.stack([oracle_labels(truth, confusion, seed=seed + ANNOTATOR_SEED_STRIDE * m)
                                 for m in range(self.n)])
        self.first = np.random.default_rng(seed + 6007).integers(0, self.n, len(truth))

    def single(self) -> np.ndarray:
        """The first vote on every item: what a group that asks once per item receives."""
        return self.answers[self.first, np.arange(self.answers.shape[1])].copy()

    def annotator(self, rows: np.ndarray, k) -> np.ndarray:
        """Who casts the k-th vote on each of ``rows``."""
        return (self.first[rows] + np.asarray(k)) % self.n

    def answer(self, rows: np.ndarray, k, given: np.ndarray) -> np.ndarray:
        """The k-th vote on each of ``rows``; k = 0 is ``given`` (the single vote, stale labels of a drift
        scenario included)."""
        rows = np.asarray(rows, dtype=np.int64)
        k = np.broadcast_to(np.asarray(k, dtype=np.int64), rows.shape)
        out = self.answers[self.annotator(rows, k), rows]
        out[k == 0] = given[rows[k == 0]]
        return out


@dataclass
class Votes:
    """One relabelling group's votes: ``counts[i]`` votes on item i (the 0th … counts[i]−1th of its order)."""

    crowd: Crowd
    counts: np.ndarray

    @classmethod
    def start(cls, crowd: Crowd, labeled: np.ndarray) -> Votes:
        counts = np.zeros(crowd.answers.shape[1], dtype=np.int64)
        counts[labeled] = 1
        return cls(crowd, counts)

    def full(self, rows: np.ndarray) -> np.ndarray:
        """Rows that have a vote from every annotator: not relabel-able."""
        return rows[self.counts[rows] >= self.crowd.n]

    def long(self, rows: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, annotator, label) of every vote on ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        item = np.repeat(rows, self.counts[rows])
        k = np.concatenate([np.arange(c) for c in self.counts[rows]]) if len(rows) else np.empty(0, np.int64)
        return item, self.crowd.annotator(item, k), self.crowd.answer(item, k, given)

    def table(self, rows: np.ndarray, given: np.ndarray) -> pa.Table:
        """The votes as ``select(..., annotations=...)`` takes them (id = row index)."""
        item, who, label = self.long(rows, given)
        return pa.table({"id": pa.array(item, pa.int64()), "annotator": pa.array([f"a{a}" for a in who]),
                         "label": pa.array(label, pa.int64())})

    def add(self, rows: np.ndarray, given: np.ndarray) -> np.ndarray:
        """Record one more vote on each of ``rows`` (a new item's first); returns those votes."""
        rows = np.asarray(rows, dtype=np.int64)
        if (self.counts[rows] >= self.crowd.n).any():
            raise ValueError("an item already has a vote from every annotator")  # excluded from selection
        got = self.crowd.answer(rows, self.counts[rows], given)
        self.counts[rows] += 1
        return got

    def consensus(self, rows: np.ndarray, given: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, str]:
        """(consensus label of each of ``rows``, the rule that gave them: ``crowdlab`` or ``majority``) from
        ``resolve_crowdlab`` with ``probs`` (out-of-sample, one row per item of ``rows``)."""
        from broaden.rounds.resolve import resolve_crowdlab

        item, who, label = self.long(rows, given)
        votes = [{"item_key": str(i), "round": 0, "annotator": f"a{a}", "label": int(v)}
                 for i, a, v in zip(item.tolist(), who.tolist(), label.tolist())]
        result = resolve_crowdlab(votes, {(str(i), 0): p for i, p in zip(rows.tolist(), probs)})
        labels = np.empty(len(rows), dtype=np.int64)
        for j, i in enumerate(rows.tolist()):
            res = result.items[(str(i), 0)]
            # A majority tie would leave the item unlabelled, but majority only runs while every item has one vote.
            labels[j] = res.label if res.label is not None else given[i]
        return labels, result.method

    def report(self, rows: np.ndarray, consensus: np.ndarray, given: np.ndarray, truth: np.ndarray,
               relabels: int) -> dict:
        """The round's record: relabel picks, votes so far, and how often the consensus and the first vote
        alone are right, over every labelled item and over the items with two or more votes."""
        multi = self.counts[rows] > 1
        right, first_right = consensus == truth[rows], given[rows] == truth[rows]

        def share(mask: np.ndarray, x: np.ndarray) -> float | None:
            return float(x[mask].mean()) if mask.any() else None

        every = np.ones(len(rows), bool)
        return {"relabels": int(relabels), "votes": int(self.counts[rows].sum()), "multi_voted": int(multi.sum()),
                "consensus_accuracy": share(every, right), "first_vote_accuracy": share(every, first_right),
                "multi_consensus_accuracy": share(multi, right),
                "multi_first_vote_accuracy": share(multi, first_right)}
