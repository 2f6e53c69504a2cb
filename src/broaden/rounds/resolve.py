"""Turning several annotators' votes into one label, and the bad-case yield of each strategy.

Resolution rules (documented in docs/rounds.md; the workspace's ``label_resolution``). An item sent again
to be relabelled (``activelab``) pools its votes from every round that sent it, each annotator's latest
vote counting once; every one of those rounds sees the same resolution.

- ``majority`` (default): each annotator counts once per item, with their latest label; the label with
  the most votes wins; when two or more labels share the top count the item is *tied*: it keeps all its
  votes, gets no label (it is left out of training and of yields) and is flagged in ``status`` until
  another vote breaks the tie.
- ``crowdlab``: cleanlab's multi-annotator consensus (CROWDLAB; Goh, Tkachenko & Mueller 2022), which
  weighs each annotator by their estimated quality against the model's probabilities for the item, so
  every voted item gets a label (no ties) with a consensus quality score, and each annotator a quality.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

from broaden.errors import BroadenError

RESOLUTIONS = ("majority", "crowdlab")


class MissingProbabilities(BroadenError, ValueError):
    """CROWDLAB applies, but a voted item has no model probabilities in any round that sent it."""

    def __init__(self, key: str, round: int):
        super().__init__(f"crowdlab needs the model's probabilities of every voted item; none for item {key!r} "
                         f"(first sent in round {round})")
        self.key, self.round = key, round


@dataclass(frozen=True)
class Resolution:
    label: int | None
    votes: dict[int, int]
    quality: float | None = None  # CROWDLAB's consensus quality score in 0..1 (None under majority vote)

    @property
    def tie(self) -> bool:
        return self.label is None and bool(self.votes)


def pooled_votes(votes: Iterable) -> tuple[dict[str, dict[str, int]], dict[str, list[int]]]:
    """({item_key: {annotator: label}}, {item_key: rounds with votes, ascending}) from rows with item_key,
    round, annotator, label (:meth:`Ledger.votes`: one per annotator and round): an annotator who voted on an
    item in several rounds counts once, with the vote of the latest round."""
    latest: dict[str, dict[str, int]] = {}
    rounds: dict[str, set[int]] = {}
    for row in sorted(votes, key=lambda r: int(r["round"])):
        key = row["item_key"]
        latest.setdefault(key, {})[str(row["annotator"])] = int(row["label"])
        rounds.setdefault(key, set()).add(int(row["round"]))
    return latest, {k: sorted(v) for k, v in rounds.items()}


def resolve_votes(votes: Iterable) -> dict[tuple[str, int], Resolution]:
    """Majority vote: ``votes`` (rows with item_key, round, annotator, label, as :meth:`Ledger.votes` returns
    them) → {(item_key, round): Resolution} for every round in which the item has votes."""
    latest, rounds = pooled_votes(votes)
    out = {}
    for key, by_annotator in latest.items():
        counter = Counter(by_annotator.values())
        ranked = counter.most_common()
        top = ranked[0][1]
        winners = [label for label, n in ranked if n == top]
        res = Resolution(winners[0] if len(winners) == 1 else None, dict(sorted(counter.items())))
        out.update(((key, rnd), res) for rnd in rounds[key])
    return out


@dataclass
class Consensus:
    """The labels of a workspace's voted items under one rule, and what that rule says about the annotators.

    ``items``: {(item_key, round): Resolution}. ``annotators``: one dict per annotator (``annotator``,
    ``quality``, ``agreement_with_consensus``, ``worst_class``, ``items``), lowest quality first, or None
    under majority vote. ``note``: why CROWDLAB fell back to majority vote, if it did.
    """

    method: str
    items: dict[tuple[str, int], Resolution]
    annotators: list[dict] | None = None
    note: str | None = None


def crowdlab_votes(latest: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[str], np.ndarray]:
    """(item keys, annotators, the N × M label matrix with NaN where an annotator did not label an item) of
    :func:`pooled_votes`' first result: the wide form cleanlab's multi-annotator functions take, sorted."""
    keys = sorted(latest)
    annotators = sorted({a for by_annotator in latest.values() for a in by_annotator})
    col_of = {a: j for j, a in enumerate(annotators)}
    wide = np.full((len(keys), len(annotators)), np.nan)
    for i, key in enumerate(keys):
        for a, label in latest[key].items():
            wide[i, col_of[a]] = label
    return keys, annotators, wide


def resolve_crowdlab(votes: Iterable, pred_probs: Mapping[tuple[str, int], np.ndarray]) -> Consensus:
    """CROWDLAB consensus (``cleanlab.multiannotator.get_label_quality_multiannotator`` with its defaults) of
    every voted item; ``pred_probs[(item_key, round)]`` is the model's probabilities for the item (the ones
    it was selected with: out-of-sample, as CROWDLAB wants; for an item sent in several rounds, the first).

    CROWDLAB needs two or more annotators and an item with two or more votes; before that the rule is
    majority vote (one vote per item: that vote), and ``note`` says so.
    """
    votes = list(votes)
    latest, rounds = pooled_votes(votes)
    keys, annotators, wide = crowdlab_votes(latest)
    per_item = (~np.isnan(wide)).sum(axis=1)
    if len(annotators) < 2 or not (per_item > 1).any():
        why = ("one annotator" if len(annotators) < 2 else "no item with two or more votes")
        return Consensus("majority", resolve_votes(votes), None,
                         f"crowdlab needs two or more annotators and an item with two or more votes; there is "
                         f"{why} yet, so labels are the majority vote")
    first = {k: next((rnd for rnd in rounds[k] if (k, rnd) in pred_probs), None) for k in keys}
    missing = [k for k, rnd in first.items() if rnd is None]
    if missing:
        raise MissingProbabilities(missing[0], rounds[missing[0]][0])
    from cleanlab.multiannotator import get_label_quality_multiannotator

    probs = np.stack([np.asarray(pred_probs[(k, first[k])], dtype=np.float64) for k in keys])
    info = get_label_quality_multiannotator(wide, probs, verbose=False)
    quality = info["label_quality"]
    labels = quality["consensus_label"].to_numpy()
    scores = quality["consensus_quality_score"].to_numpy()
    items = {}
    for i, key in enumerate(keys):
        counts = Counter(int(v) for v in wide[i] if not np.isnan(v))
        res = Resolution(int(labels[i]), dict(sorted(counts.items())), float(scores[i]))
        items.update(((key, rnd), res) for rnd in rounds[key])
    stats_ = info["annotator_stats"]  # indexed by column position (we passed an array), worst first
    table = [{"annotator": annotators[int(j)], "quality": float(row["annotator_quality"]),
              "agreement_with_consensus": float(row["agreement_with_consensus"]),
              "worst_class": int(row["worst_class"]), "items": int(row["num_examples_labeled"])}
             for j, row in stats_.iterrows()]
    return Consensus("crowdlab", items, table)


@dataclass(frozen=True)
class Yield:
    """Bad cases among labelled items with a Beta(1 + bad, 1 + good) posterior (uniform prior)."""

    labelled: int
    bad: int
    mean: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"labelled": self.labelled, "bad": self.bad, "mean": self.mean, "low": self.low, "high": self.high}


def beta_yield(bad: int, labelled: int, level: float = 0.9) -> Yield:
    """Posterior mean (bad + 1) / (labelled + 2) and the central ``level`` interval of Beta(bad+1, good+1)."""
    a, b = bad + 1, labelled - bad + 1
    tail = (1.0 - level) / 2
    low, high = stats.beta.ppf([tail, 1.0 - tail], a, b)
    return Yield(labelled, bad, a / (a + b), float(low), float(high))
