"""What a report shows, independent of where it came from (a simulation folder or a rounds workspace).

Each source reader (``broaden.report.sources``) fills a :class:`ReportData`; a section it cannot fill stays
``None`` and the page says why in ``ReportData.missing``. Rendering only ever reads these objects.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MetricColumn:
    """One column of a results table; ``higher_is_better`` decides which value is marked best (None: no
    value is better, e.g. a count)."""

    key: str
    label: str
    higher_is_better: bool | None = True
    digits: int = 3


@dataclass
class MetricTable:
    """Rows (groups or rounds) × metric columns; each cell holds the values of every repeat."""

    title: str
    caption: str
    columns: list[MetricColumn]
    rows: dict[str, dict[str, list[float]]]
    row_header: str = "group"
    # Optional text per cell (e.g. a paired test against the reference group), keyed like rows; shown
    # under the value, or as its tooltip when the table is too wide for it (``notes_inline=False``).
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    notes_inline: bool = True


@dataclass
class ScoreSet:
    """Labels and probabilities of one evaluated model (one group, one round): drawn as PR/ROC curves."""

    name: str
    labels: np.ndarray
    probs: np.ndarray


@dataclass
class Series:
    """One line of a trend plot over rounds, with an optional band (± std over repeats, or an interval)."""

    name: str
    x: list[float]
    y: list[float]
    low: list[float] | None = None
    high: list[float] | None = None


@dataclass
class TrendPanel:
    title: str
    ylabel: str
    series: list[Series]
    xlabel: str = "round"


@dataclass
class LookalikeData:
    """LT scores P(z=1|h) (Eq. 4) of labelled items, split by whether each is a bad case (d > τ1)."""

    name: str
    scores: np.ndarray
    bad: np.ndarray
    tau2: float | None = None
    auc: float | None = None  # when None, computed from ``scores`` and ``bad``
    auc_text: str | None = None  # how the source reports it, e.g. "0.71 ± 0.02 over 3 repeats"
    note: str = ""
    bad_label: str = "bad case (d > τ1)"
    consistent_label: str = "consistent (ŷ = y)"


@dataclass
class ExplorerItem:
    """One row of the bad-case explorer: a seed or one of its neighbours."""

    id: str
    label: int | None = None
    probs: list[float] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    image: str | None = None  # a data: URI (PNG)
    audio: str | None = None  # a data: URI (WAV) or a relative path
    similarity: float | None = None
    lookalike: float | None = None
    strategy: str | None = None
    rank: int | None = None
    discrepancy: float | None = None
    selected: bool | None = None  # the neighbour made it into the batch


@dataclass
class ExplorerCase:
    seed: ExplorerItem
    neighbours: list[ExplorerItem]
    context: str | None = None  # where the seed came from, e.g. "round 2"


@dataclass
class ExplorerData:
    cases: list[ExplorerCase]
    total_seeds: int | None = None  # how many seeds existed before the report kept the top ones
    note: str = ""


@dataclass
class ConfusionData:
    title: str
    matrix: np.ndarray


@dataclass
class ReportData:
    """Everything one report page shows. ``missing`` maps a section id to why it is not shown."""

    title: str
    kind: str
    source: str
    meta: dict[str, str] = field(default_factory=dict)
    class_names: list[str] | None = None
    table1: MetricTable | None = None
    table2: MetricTable | None = None
    curves: list[ScoreSet] | None = None
    curves_note: str = ""
    positive: list[int] | None = None
    trends: list[TrendPanel] | None = None
    lookalike: list[LookalikeData] | None = None
    explorer: ExplorerData | None = None
    confusion: list[ConfusionData] | None = None
    missing: dict[str, str] = field(default_factory=dict)

    def class_name(self, c: int | None) -> str:
        if c is None or c < 0:
            return "–"
        if self.class_names and c < len(self.class_names):
            return self.class_names[c]
        return str(c)
