"""When to stop labelling: three signals per finished round and a plain-language reading — advice for the
team, never acted on automatically.

(a) **Stabilising predictions** (Bloodgood & Vijay-Shanker 2009, "A Method for Stopping Active Learning Based
    on Stabilizing Predictions and the Need for User-Adjustable Stopping", CoNLL): Cohen's κ between the
    argmax predictions of consecutive rounds' models on a fixed unlabelled *stop set* (drawn once per
    workspace, :mod:`broaden.rounds.stopset`). The predictions are *stable* once κ ≥ 0.99 for three
    consecutive rounds: more labels have stopped changing what the model predicts. (small-text's
    ``KappaAverage`` reads the paper differently: it stops when κ changes by less than 1 − 0.99 on average
    over the window.)
(b) **Certain metrics**: the maximum Beta-posterior variance of precision and recall on the eval set (Eq. 12,
    :func:`broaden.metrics.max_beta_variance`) below 0.005: the eval metrics the decision rests on are
    themselves certain.
(c) **Yield trend**: the share of each round's newly labelled items that the selecting model got wrong
    (bad cases). A yield that keeps falling means each new label teaches the model less.

The advice is "consider stopping" once (a) holds, qualified by (b) and (c); otherwise "keep labelling" with
what is still missing. Everything here is a pure function of per-round numbers.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from broaden.metrics import cohen_kappa

KAPPA_THRESHOLD = 0.99
STABLE_ROUNDS = 3
VARIANCE_THRESHOLD = 0.005


def consecutive_kappas(predictions: Sequence[Sequence[int] | None],
                       stop_sets: Sequence[str | None] | None = None) -> list[float | None]:
    """κ between each round's stop-set predictions and the previous round's (None for the first round, or
    when either is missing or they are not predictions of the same items: another length, or another
    ``stop_sets`` entry, e.g. a digest of the ids)."""
    out: list[float | None] = [None] * len(predictions)
    for i in range(1, len(predictions)):
        a, b = predictions[i - 1], predictions[i]
        same = stop_sets is None or stop_sets[i - 1] == stop_sets[i]
        if a is not None and b is not None and same and len(a) == len(b) and len(a):
            out[i] = cohen_kappa(np.asarray(a), np.asarray(b))
    return out


def kappa_runs(kappas: Sequence[float | None], *, threshold: float = KAPPA_THRESHOLD) -> list[int]:
    """At position i, how many consecutive κ up to and including i are ≥ ``threshold`` (a missing or NaN κ
    breaks the run)."""
    out, run = [], 0
    for k in kappas:
        run = run + 1 if k is not None and math.isfinite(k) and k >= threshold else 0
        out.append(run)
    return out


def stable_predictions(kappas: Sequence[float | None], *, threshold: float = KAPPA_THRESHOLD,
                       rounds: int = STABLE_ROUNDS) -> list[bool]:
    """True at position i when κ ≥ ``threshold`` at i and at the ``rounds`` − 1 positions before it (a missing
    κ breaks the run)."""
    return [run >= rounds for run in kappa_runs(kappas, threshold=threshold)]


def falling_yield(yields: Sequence[float | None], *, rounds: int = STABLE_ROUNDS) -> list[bool]:
    """True at position i when the yield never rose over the last ``rounds`` rounds and ended lower than it
    started (a round without judged labels breaks the run)."""
    out = []
    for i in range(len(yields)):
        window = yields[max(0, i - rounds + 1):i + 1]
        ok = len(window) == rounds and all(y is not None for y in window)
        out.append(bool(ok and all(b <= a for a, b in zip(window, window[1:])) and window[-1] < window[0]))
    return out


@dataclass(frozen=True)
class StoppingSignal:
    """The three signals of one finished round and the reading they add up to."""

    round: int
    kappa: float | None             # vs the previous finished round's model, on the stop set
    stable: bool                    # (a) κ ≥ 0.99 for three consecutive rounds
    max_beta_variance: float | None
    certain: bool                   # (b) max Beta variance < 0.005
    labelled: int                   # this round's newly labelled items judged against the selecting model
    bad: int                        # … of which the selecting model got wrong
    yield_share: float | None       # bad / labelled
    yield_falling: bool             # (c)
    advice: str                     # "keep labelling" or "consider stopping"
    reading: str

    def to_dict(self) -> dict:
        return asdict(self)


def stopping_signals(rounds: Sequence[int], predictions: Sequence[Sequence[int] | None],
                     max_beta_variances: Sequence[float | None], tallies: Sequence[tuple[int, int]], *,
                     stop_sets: Sequence[str | None] | None = None, kappa_threshold: float = KAPPA_THRESHOLD,
                     stable_rounds: int = STABLE_ROUNDS,
                     variance_threshold: float = VARIANCE_THRESHOLD) -> list[StoppingSignal]:
    """One :class:`StoppingSignal` per finished round, in order. ``predictions``: each round's model's argmax
    on the stop set (None when not recorded; ``stop_sets`` names which stop set, when it can change);
    ``max_beta_variances``: Eq. 12 on the eval set (None without one); ``tallies``: (judged, bad) among the
    round's newly labelled items."""
    if not len(rounds) == len(predictions) == len(max_beta_variances) == len(tallies):
        raise ValueError("rounds, predictions, max_beta_variances and tallies must have one entry per round")
    kappas = consecutive_kappas(predictions, stop_sets)
    runs = kappa_runs(kappas, threshold=kappa_threshold)
    yields = [bad / n if n else None for n, bad in tallies]
    falling = falling_yield(yields, rounds=stable_rounds)
    out = []
    for i, rnd in enumerate(rounds):
        var = max_beta_variances[i]
        var = None if var is None or not math.isfinite(var) else float(var)
        certain = var is not None and var < variance_threshold
        stable = runs[i] >= stable_rounds
        advice, reading = _reading(rounds[:i + 1], kappas[i], runs[i], stable, var, certain, yields[:i + 1],
                                   falling[i], kappa_threshold, stable_rounds, variance_threshold,
                                   has_predictions=predictions[i] is not None)
        out.append(StoppingSignal(int(rnd), kappas[i], stable, var, certain, int(tallies[i][0]),
                                  int(tallies[i][1]), yields[i], falling[i], advice, reading))
    return out


def _reading(rounds, k, run, stable, var, certain, yields, falling, kappa_threshold, stable_rounds,
             variance_threshold, *, has_predictions: bool) -> tuple[str, str]:
    if stable:
        head = (f"predictions are stable (κ ≥ {kappa_threshold:g} vs the previous round for {stable_rounds} "
                "rounds)")
    elif not has_predictions:
        head = "no stop-set predictions for this round, so stability is unknown"
    elif k is None:
        head = "the first round with stop-set predictions: stability needs the next rounds to compare with"
    else:
        head = (f"predictions still change (κ = {k:.3f} vs round {rounds[-2]}; stable needs ≥ {kappa_threshold:g} "
                f"for {stable_rounds} rounds, {run} so far)")
    parts = [head]
    if var is None:
        parts.append("no eval metrics, so their certainty is unknown")
    elif certain:
        parts.append(f"the eval metrics are certain (max Beta variance {var:.4f} < {variance_threshold:g})")
    else:
        parts.append(f"the eval metrics are still uncertain (max Beta variance {var:.4f} ≥ {variance_threshold:g}; "
                     "a larger eval set narrows them)")
    y = yields[-1]
    if y is not None:
        seen = [v for v in yields if v is not None]
        if falling:
            parts.append(f"the yield is falling ({' → '.join(f'{v:.2f}' for v in seen[-stable_rounds:])})")
        else:
            parts.append(f"the selecting model got {y:.0%} of this round's new labels wrong")
    advice = "consider stopping" if stable else "keep labelling"
    return advice, f"{advice}: " + "; ".join(parts)


# ------------------------------------------------------------------------------ from a workspace
def round_tallies(items: Iterable[Mapping], labels: Mapping[tuple[str, int], int]) -> dict[int, tuple[int, int]]:
    """(judged, bad) per round: items whose votes resolved to a label and that were selected with a
    prediction; bad when the label differs from it. ``labels`` maps (item key, round) to the label."""
    out: dict[int, list[int]] = {}
    for it in items:
        label = labels.get((it["item_key"], it["round"]))
        if label is not None and it["pred"] is not None:
            t = out.setdefault(int(it["round"]), [0, 0])
            t[0] += 1
            t[1] += int(label != it["pred"])
    return {r: (n, bad) for r, (n, bad) in out.items()}


def workspace_signals(rounds: Iterable[Mapping], tallies: Mapping[int, tuple[int, int]]) -> list[StoppingSignal]:
    """:func:`stopping_signals` of a workspace's finished rounds (ledger rows with ``round``, ``status`` and
    the ``metrics`` JSON ``round finish`` records: ``eval`` and ``stop_set``)."""
    numbers, preds, digests, variances, counts = [], [], [], [], []
    for r in rounds:
        if r["status"] != "finished":
            continue
        metrics = r["metrics"] if isinstance(r["metrics"], Mapping) else json.loads(r["metrics"] or "{}")
        stop = metrics.get("stop_set") or {}
        numbers.append(int(r["round"]))
        preds.append(stop.get("predictions"))
        digests.append(stop.get("digest"))
        variances.append((metrics.get("eval") or {}).get("max_beta_variance"))
        counts.append(tallies.get(int(r["round"]), (0, 0)))
    return stopping_signals(numbers, preds, variances, counts, stop_sets=digests)
