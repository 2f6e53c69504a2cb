"""Turning several annotators' votes into one label, and the bad-case yield of each strategy.

Resolution rule (documented in docs/rounds.md): each annotator counts once per item, with their latest
label; the label with the most votes wins; when two or more labels share the top count the item is
*tied*: it keeps all its votes, gets no label (it is left out of training and of yields) and is flagged
in ``status`` until another vote breaks the tie.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Resolution:
    label: int | None
    votes: dict[int, int]

    @property
    def tie(self) -> bool:
        return self.label is None and bool(self.votes)


def resolve_votes(votes: Iterable) -> dict[tuple[str, int], Resolution]:
    """``votes``: rows with item_key, round, annotator, label (one per annotator, as
    :meth:`Ledger.votes` returns them) → {(item_key, round): Resolution}."""
    counts: dict[tuple[str, int], Counter] = {}
    for row in votes:
        counts.setdefault((row["item_key"], int(row["round"])), Counter())[int(row["label"])] += 1
    out = {}
    for key, counter in counts.items():
        ranked = counter.most_common()
        top = ranked[0][1]
        winners = [label for label, n in ranked if n == top]
        out[key] = Resolution(winners[0] if len(winners) == 1 else None, dict(sorted(counter.items())))
    return out


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
