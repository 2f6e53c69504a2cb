"""Where broadening can pay off: a sub-population S and how the snapshot meets it (DESIGN.md §3a).

- ``iid``: the paper's protocol as before (random initial set, pool from the same distribution).
- ``drift`` (an emerging pattern): S's correct label changed after the snapshot (``relabel_to``). The
  initial labelled set keeps S's stale labels; the oracle, the recent batch and the test split use the new.
- ``blindspot``: S is absent from the initial labelled set.

In both, a *recent labelled partition* (``recent`` items from outside S plus ``recent_subpop`` items of
S, labelled by the oracle) is scored out-of-sample by the snapshot — the paper's "most recent partitions
of the log" — and the seeds and the Lookalike model come from it. Every group then trains on initial +
recent + its own selection.

S is defined from real structure (:func:`subpopulation`):

- ``kmeans:CLASS:K:CLUSTER`` — cluster CLUSTER of a k-means (K clusters) of class CLASS's feature vectors;
  ``kmeans:CLASS:K`` lists the clusters (size, top terms) so a user can pick.
- ``keyword:CLASS:REGEX`` — items of CLASS whose text matches REGEX (case-insensitive; CLASS ``*`` = any).
- ``column:NAME=VALUE`` — items whose column NAME (own data, or ``orig_label`` after class grouping)
  equals VALUE.
- ``ids:FILE`` — the ids in FILE (text, CSV or Parquet with an ``id`` column).

k-means partitions differ between processes and thread counts, so a run saves S as an id list
(``subpop.parquet``) and a resumed run reads it back instead of clustering again.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from broaden.errors import BroadenError

SCENARIOS = ("iid", "drift", "blindspot")
SUBPOP_KINDS = ("kmeans", "keyword", "column", "ids")
_WORD = re.compile(r"[a-z][a-z']{2,}")
_STOP = frozenset("the and for with from that this are was were have has its their his her you your our but not "
                  "into over after about more than out new who what how why will can all one two".split())


class ScenarioError(BroadenError, ValueError):
    """A scenario or sub-population that the data cannot support; the message names the setting."""


@dataclass(frozen=True)
class Scenario:
    """How S enters the protocol (module docstring). ``recent`` = 0 keeps the i.i.d. protocol's seeds
    (every labelled item, scored by K-fold cross-validation)."""

    kind: str = "iid"
    subpop: str | None = None
    relabel_to: int | None = None
    recent: int = 0
    recent_subpop: int = 0

    def __post_init__(self):
        if self.kind not in SCENARIOS:
            raise ScenarioError(f"scenario must be one of {', '.join(SCENARIOS)}, got {self.kind!r}")
        if self.kind != "iid" and not self.subpop:
            raise ScenarioError(f"the {self.kind} scenario needs a sub-population (subpop)")
        if self.kind == "drift" and self.relabel_to is None:
            raise ScenarioError("the drift scenario needs relabel_to=CLASS: S's label after the change")
        if self.kind != "drift" and self.relabel_to is not None:
            raise ScenarioError("relabel_to applies to the drift scenario only")
        if self.recent < 0 or self.recent_subpop < 0:
            raise ScenarioError("recent and recent_subpop must be >= 0")
        if self.recent_subpop and not self.subpop:
            raise ScenarioError("recent_subpop needs a sub-population (subpop)")
        if self.kind != "iid" and self.recent + self.recent_subpop == 0:
            raise ScenarioError(f"the {self.kind} scenario seeds LSB from a recent labelled batch: give recent=N "
                                "and recent_subpop=n (e.g. 300 and 20)")

    def to_dict(self) -> dict:
        return asdict(self)


def class_index(data, text: str) -> int:
    """A class given by index or by name."""
    text = text.strip()
    if text.isascii() and text.isdigit() and int(text) < data.num_classes:
        return int(text)
    names = [str(n) for n in data.class_names]
    if text in names:
        return names.index(text)
    raise ScenarioError(f"unknown class {text!r}; classes are 0..{data.num_classes - 1} ({', '.join(names)})")


def _parts(spec: str, n: int, usage: str) -> list[str]:
    parts = spec.split(":", n - 1)
    if len(parts) != n:
        raise ScenarioError(f"bad sub-population {spec!r}; expected {usage}")
    return parts


def subpopulation(data, spec: str, *, seed: int = 0) -> np.ndarray:
    """Row mask of the sub-population ``spec`` (module docstring) over every row, test split included."""
    kind = spec.split(":", 1)[0]
    if kind == "kmeans":
        parts = spec.split(":")
        if len(parts) != 4:
            raise ScenarioError(f"bad sub-population {spec!r}; expected kmeans:CLASS:K:CLUSTER "
                                "(kmeans:CLASS:K lists the clusters)")
        _, cls, k, cluster = parts
        members, assign = kmeans_clusters(data, class_index(data, cls), _int(k, spec), seed=seed)
        cluster = _int(cluster, spec)
        if not 0 <= cluster < _int(k, spec):
            raise ScenarioError(f"{spec}: cluster must be within 0..{int(k) - 1}")
        mask = np.zeros(len(data.ids), dtype=bool)
        mask[members[assign == cluster]] = True
    elif kind == "keyword":
        _, cls, pattern = _parts(spec, 3, "keyword:CLASS:REGEX")
        if data.texts is None:
            raise ScenarioError(f"{spec}: the data has no texts to match")
        try:
            rx = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ScenarioError(f"{spec}: bad regular expression ({exc})") from exc
        mask = np.fromiter((bool(rx.search(t or "")) for t in data.texts), dtype=bool, count=len(data.ids))
        if cls.strip() != "*":
            mask &= data.labels == class_index(data, cls)
    elif kind == "column":
        _, rest = _parts(spec, 2, "column:NAME=VALUE")
        name, sep, value = rest.partition("=")
        columns = getattr(data, "columns", None) or {}
        if not sep or name not in columns:
            raise ScenarioError(f"{spec}: expected column:NAME=VALUE with NAME one of "
                                f"{', '.join(columns) or '(the data has no extra columns)'}")
        mask = np.asarray([str(v) == value for v in columns[name]], dtype=bool)
    elif kind == "ids":
        from broaden.io.ids import read_ids

        _, path = _parts(spec, 2, "ids:FILE")
        wanted = {str(i) for i in read_ids(path)}
        mask = np.asarray([str(i) in wanted for i in data.ids], dtype=bool)
    else:
        raise ScenarioError(f"unknown sub-population kind {kind!r} in {spec!r}; choose one of "
                            f"{', '.join(SUBPOP_KINDS)}")
    if not mask.any():
        raise ScenarioError(f"sub-population {spec!r} is empty on {data.name}")
    return mask


def _int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScenarioError(f"{spec}: {text!r} is not an integer") from None


def kmeans_clusters(data, cls: int, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows of class ``cls``, their cluster) from k-means on L2-normalised features (the encoder space)."""
    from sklearn.cluster import KMeans

    if k < 2:
        raise ScenarioError(f"k-means needs K >= 2 clusters, got {k}")
    members = np.flatnonzero(data.labels == cls)
    if len(members) < k:
        raise ScenarioError(f"class {cls} has {len(members)} items, fewer than K = {k} clusters")
    x = data.features[members].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    assign = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    return members, assign


def top_terms(texts: list[str], rows: np.ndarray, background: np.ndarray, n: int = 6) -> list[str]:
    """Words most over-represented in ``rows`` against ``background`` (smoothed ratio of document rates)."""
    def doc_counts(idx):
        c = Counter()
        for i in idx:
            c.update({w for w in _WORD.findall((texts[i] or "").lower()) if w not in _STOP})
        return c

    inside, outside = doc_counts(rows), doc_counts(background)
    min_docs = max(3, len(rows) // 50)
    score = {w: (c / len(rows)) / ((outside[w] + 1) / (len(background) + 1))
             for w, c in inside.items() if c >= min_docs}
    return [w for w, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def describe_clusters(data, cls: int, k: int, *, seed: int = 0) -> list[dict]:
    """One row per cluster of class ``cls``: its index, size and top terms."""
    members, assign = kmeans_clusters(data, cls, k, seed=seed)
    out = []
    for c in range(k):
        rows = members[assign == c]
        terms = top_terms(data.texts, rows, members[assign != c]) if data.texts is not None else []
        out.append({"cluster": c, "size": int(len(rows)), "top_terms": terms})
    return out


def print_clusters(data, spec: str, *, seed: int = 0, console=None) -> list[dict]:
    """``kmeans:CLASS:K``: print the clusters a user can choose from (and return them)."""
    from broaden.console import make_console, print_table

    _, cls, k = _parts(spec, 3, "kmeans:CLASS:K")
    index = class_index(data, cls)
    rows = describe_clusters(data, index, _int(k, spec), seed=seed)
    print_table(f"k-means of class {data.class_names[index]!s} ({k} clusters, {data.name}): pick one as "
                f"--subpop {spec}:CLUSTER", ["cluster", "size", "top terms"],
                ((str(r["cluster"]), str(r["size"]), ", ".join(r["top_terms"]) or "–") for r in rows),
                console=console or make_console())
    return rows


def describe(data, spec: str, mask: np.ndarray) -> str:
    """One line saying what S is, so a user can check a k-means cluster is the one they picked."""
    others = np.flatnonzero(~mask)
    terms = top_terms(data.texts, np.flatnonzero(mask), others) if data.texts is not None else []
    return (f"S = {spec}: {int(mask.sum())} items ({int((mask & data.is_test).sum())} in the test split)"
            + (f"; top terms: {', '.join(terms)}" if terms else ""))


def labels_after(data, scenario: Scenario, subpop: np.ndarray | None) -> np.ndarray:
    """The correct labels once the scenario has happened (drift: S relabelled), for oracle and test."""
    labels = data.labels.copy()
    if scenario.kind == "drift":
        labels[subpop] = scenario.relabel_to
    return labels


@dataclass
class Split:
    """Row indices of one repeat: initial labelled set, recent labelled batch, pool, test."""

    initial: np.ndarray
    recent: np.ndarray
    pool: np.ndarray
    test: np.ndarray


def split_rows(data, scenario: Scenario, subpop: np.ndarray | None, *, initial: int, needed_pool: int,
               pool_size: int | None, rng: np.random.Generator) -> Split:
    """Draw the initial set, the recent batch and the pool from the training rows (module docstring).

    The i.i.d. scenario without a recent batch draws exactly as before (same generator calls), so
    earlier results reproduce.
    """
    train = np.flatnonzero(~data.is_test)
    test = np.flatnonzero(data.is_test)
    in_s = subpop if subpop is not None else np.zeros(len(data.ids), dtype=bool)
    eligible = train[~in_s[train]] if scenario.kind == "blindspot" else train
    if initial + scenario.recent + scenario.recent_subpop + needed_pool > len(train) or initial > len(eligible):
        raise ScenarioError(f"{data.name}: {len(train)} training rows ({len(eligible)} eligible for the initial "
                            f"set) cannot hold {initial} initial labels, a recent batch of "
                            f"{scenario.recent}+{scenario.recent_subpop} and the rounds' budget {needed_pool}")
    init = np.sort(rng.choice(eligible, initial, replace=False))
    rest = np.setdiff1d(train, init)
    recent = np.empty(0, dtype=np.int64)
    if scenario.recent or scenario.recent_subpop:
        outside, inside = rest[~in_s[rest]], rest[in_s[rest]]
        if scenario.recent > len(outside) or scenario.recent_subpop > len(inside):
            raise ScenarioError(f"{data.name}: the recent batch asks for {scenario.recent} items outside S and "
                                f"{scenario.recent_subpop} in S; the training rows left have {len(outside)} "
                                f"and {len(inside)}")
        recent = np.sort(np.concatenate([rng.choice(outside, scenario.recent, replace=False),
                                         rng.choice(inside, scenario.recent_subpop, replace=False)]))
        rest = np.setdiff1d(rest, recent)
    if pool_size and pool_size < len(rest):
        rest = np.sort(rng.choice(rest, pool_size, replace=False))
    return Split(init, recent, rest, test)
