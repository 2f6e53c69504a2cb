"""The report's figures, drawn with matplotlib and returned as inline SVG markup.

Text stays text (``svg.fonttype = none``: small files, selectable labels; matplotlib XML-escapes it) and
each figure gets its own id salt so several SVGs can share one page without clashing ids. Colours come
from one :class:`Palette`, so a group has the same colour in every plot, table swatch and explorer tag.
"""
from __future__ import annotations

import functools
import io
import itertools
import re
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from broaden.metrics import (ECE_BINS, binary_view, operating_points, precision_points, reliability_bins, roc_auc,
                             tpr_at_fpr)
from broaden.report.data import ConfusionData, LookalikeData, ScoreSet, TrendPanel
from broaden.report.safe import Markup, escape

# Okabe–Ito (without its yellow, too faint on white), then Tol's muted colours.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#332288", "#44AA99",
           "#882255", "#999933", "#AA4499", "#117733")
RANDOM_COLOUR = "#8C8C8C"
BAD_COLOUR, CONSISTENT_COLOUR = "#D55E00", "#0072B2"
MAX_CURVE_POINTS = 600

_STYLE = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa3af",
    "axes.labelcolor": "#374151",
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.8,
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "text.color": "#1f2937",
    "legend.frameon": False,
    "legend.fontsize": 9,
    "figure.facecolor": "none",
    "axes.facecolor": "none",
    "savefig.facecolor": "none",
}
_SVG_HEADER = re.compile(r"^.*?(?=<svg)", re.S)
_SVG_NOISE = re.compile(r"<metadata>.*?</metadata>|<style[^>]*>.*?</style>", re.S)
_SVG_SIZE = re.compile(r'<svg([^>]*?) width="([\d.]+)pt" height="([\d.]+)pt"')


class Palette:
    """A stable colour per name, in order of first request; random baselines are always grey."""

    def __init__(self, names: Sequence[str] = ()):
        self._colours: dict[str, str] = {}
        self._cycle = itertools.cycle(COLOURS)
        for name in names:
            self[name]

    def __getitem__(self, name: str) -> str:
        if name not in self._colours:
            self._colours[name] = RANDOM_COLOUR if name.strip().lower() == "random" else next(self._cycle)
        return self._colours[name]


def mpl_text(text: object, limit: int | None = None) -> str:
    """Data-derived text for matplotlib: ``$`` would start mathtext, a leading ``_`` hides a legend entry;
    ``limit`` shortens labels that would squeeze the axes away (tick labels, titles)."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    s = s.replace("$", r"\$")
    return " " + s if s.startswith("_") else s


class SvgCanvas:
    """Renders figures to SVG strings with page-unique ids."""

    def __init__(self, prefix: str = "f"):
        self.prefix = prefix
        self._count = 0

    def figure(self, width: float, height: float) -> Figure:
        return Figure(figsize=(width, height), layout="constrained")

    def render(self, fig: Figure, label: str) -> Markup:
        self._count += 1
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.hashsalt": f"{self.prefix}{self._count}"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = _SVG_NOISE.sub("", _SVG_HEADER.sub("", buf.getvalue(), count=1))
        # Keep the aspect ratio from the viewBox and let CSS size the figure to its column.
        svg = _SVG_SIZE.sub(r'<svg\1 role="img"', svg, count=1)
        svg = svg.replace("<svg", f'<svg aria-label="{escape(label)}" class="fig"', 1)
        return Markup(svg)


def styled(fn):
    """Draw under the report's matplotlib style without touching the caller's global rcParams."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------- PR / ROC
def _thin(n: int, keep: Sequence[int]) -> np.ndarray:
    """Indices of at most MAX_CURVE_POINTS evenly spaced points plus the ones that must stay."""
    if n <= MAX_CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.r_[np.linspace(0, n - 1, MAX_CURVE_POINTS).astype(int), list(keep)])


def operating_point_indices(pts, levels: Sequence[float]) -> dict[str, int]:
    """For each R@P level with a positive recall, the operating point that achieves it (highest threshold)."""
    return {key: i for key, i in precision_points(pts, levels).items() if i is not None and pts.recall[i] > 0}


@styled
def pr_roc(canvas: SvgCanvas, sets: Sequence[ScoreSet], palette: Palette, *,
           positive: Sequence[int] | None = None,
           levels: Sequence[float] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> tuple[Markup, dict[str, float]]:
    """Precision–recall and ROC curves of the binary view (DESIGN §4), R@P operating points marked.

    Returns the figure and the ROC AUC of each drawn set (sets with one class only are skipped).
    """
    fig = canvas.figure(10.0, 4.0)
    ax_pr, ax_roc = fig.subplots(1, 2)
    aucs: dict[str, float] = {}
    for ss in sets:
        y, s = binary_view(ss.labels, ss.probs, positive)
        pts = operating_points(y, s)
        if pts.n_pos == 0 or pts.n_neg == 0:
            continue
        colour = palette[ss.name]
        marks = operating_point_indices(pts, levels)
        idx = _thin(len(pts.thresholds), marks.values())
        recall, precision, fpr = pts.recall[idx], pts.precision[idx], pts.fpr[idx]
        aucs[ss.name] = roc_auc(y, s)
        ax_pr.plot(np.r_[0.0, recall], np.r_[precision[0], precision], color=colour, lw=1.6,
                   drawstyle="steps-post")
        ax_roc.plot(np.r_[0.0, fpr], np.r_[0.0, recall], color=colour, lw=1.6)
        mi = np.array(list(marks.values()), dtype=int)
        if mi.size:
            ax_pr.scatter(pts.recall[mi], pts.precision[mi], s=22, color=colour, edgecolor="white",
                          linewidth=0.8, zorder=3)
            ax_roc.scatter(pts.fpr[mi], pts.recall[mi], s=22, color=colour, edgecolor="white",
                           linewidth=0.8, zorder=3)
        t1 = tpr_at_fpr(y, s, (0.01,), _pts=pts)["0.01"]  # reuse the sorted operating points
        ax_roc.scatter([0.01], [t1], marker="D", s=18, color=colour, zorder=3)
    for level in levels:
        ax_pr.axhline(level, color="#cbd5e1", lw=0.7, ls=":", zorder=0)
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02),
              title="Precision–recall (dots: R@P40…R@P90)")
    ax_roc.plot([0, 1], [0, 1], color="#cbd5e1", lw=0.8, ls="--")
    ax_roc.axvline(0.01, color="#cbd5e1", lw=0.7, ls=":")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
               title="ROC (◆: TPR at 1 % FPR)")
    return canvas.render(fig, "precision-recall and ROC curves"), aucs


# -------------------------------------------------------------------------------- reliability
@styled
def reliability(canvas: SvgCanvas, sets: Sequence[ScoreSet], palette: Palette, *,
                n_bins: int = ECE_BINS) -> tuple[Markup, dict[str, float]]:
    """Reliability diagram (Guo et al. 2017, Fig. 1): top-label accuracy against mean confidence per
    equal-width confidence bin, the diagonal being perfect calibration, and the share of items per bin.

    Returns the figure and the ECE of each drawn set (the same bins, :func:`broaden.metrics.reliability_bins`).
    """
    fig = canvas.figure(10.0, 4.0)
    ax_rel, ax_hist = fig.subplots(1, 2)
    eces: dict[str, float] = {}
    for ss in sets:
        if not len(ss.labels):
            continue
        bins = reliability_bins(ss.labels, ss.probs, n_bins)
        eces[ss.name] = bins.ece
        colour = palette[ss.name]
        used = bins.count > 0
        ax_rel.plot(bins.confidence[used], bins.accuracy[used], color=colour, lw=1.6, marker="o", ms=4)
        centres = (bins.edges[:-1] + bins.edges[1:]) / 2
        ax_hist.plot(centres, bins.count / bins.count.sum(), color=colour, lw=1.6, drawstyle="steps-mid")
    ax_rel.plot([0, 1], [0, 1], color="#cbd5e1", lw=0.8, ls="--")
    ax_rel.set(xlabel="confidence (largest probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
               title=f"Reliability ({n_bins} bins; diagonal: calibrated)")
    ax_hist.set(xlabel="confidence (largest probability)", ylabel="share of items", xlim=(0, 1),
                title="Confidence distribution")
    return canvas.render(fig, "reliability diagram"), eces


# ------------------------------------------------------------------------------------- trends
@styled
def trend(canvas: SvgCanvas, panel: TrendPanel, palette: Palette) -> Markup:
    """One value over rounds: a line per group/strategy, its band (± std, or an interval) as error bars.

    Series are dodged sideways a little so error bars at the same round do not hide each other; the
    legend is the page's (colours are the same in every plot).
    """
    fig = canvas.figure(4.6, 3.0)
    ax = fig.subplots()
    xs = sorted({float(v) for s in panel.series for v in s.x})
    step = min(np.diff(xs)) if len(xs) > 1 else 1.0
    n = len(panel.series)
    for i, series in enumerate(panel.series):
        shift = (i - (n - 1) / 2) * min(0.05, 0.6 / max(n, 1)) * step
        x, y = np.asarray(series.x, float) + shift, np.asarray(series.y, float)
        err = None
        if series.low is not None and series.high is not None:
            err = np.vstack([y - np.asarray(series.low, float), np.asarray(series.high, float) - y]).clip(min=0)
        ax.errorbar(x, y, yerr=err, color=palette[series.name], lw=1.8, marker="o", ms=4, capsize=2.5,
                    elinewidth=1.0, label=mpl_text(series.name))
    ax.set(xlabel=panel.xlabel, ylabel=mpl_text(panel.ylabel, 40), title=mpl_text(panel.title, 60))
    if xs and all(v.is_integer() for v in xs) and len(xs) <= 20:
        ax.set_xticks(xs)
        ax.set_xlim(xs[0] - 0.3 * step, xs[-1] + 0.3 * step)
    return canvas.render(fig, panel.title)


# ------------------------------------------------------------------------------- lookalike LT
@styled
def lookalike(canvas: SvgCanvas, data: LookalikeData, auc: float | None) -> Markup:
    """Histogram of LT scores for bad vs consistent items with τ2 marked (paper Eq. 4)."""
    fig = canvas.figure(6.4, 3.3)
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    scores = np.clip(np.asarray(data.scores, float), 0, 1)
    bad = np.asarray(data.bad, bool)
    for mask, name, colour in ((~bad, data.consistent_label, CONSISTENT_COLOUR), (bad, data.bad_label, BAD_COLOUR)):
        if mask.any():
            ax.hist(scores[mask], bins=bins, density=True, color=colour, alpha=0.35, lw=0)
            ax.hist(scores[mask], bins=bins, density=True, color=colour, histtype="step", lw=1.4,
                    label=mpl_text(f"{name}, n = {int(mask.sum())}"))
    if data.tau2 is not None:
        ax.axvline(data.tau2, color="#111827", lw=1.3, ls="--", label=f"τ2 = {data.tau2:g}")
    title = mpl_text(data.name, 38)
    if auc is not None and np.isfinite(auc):
        title += f"  —  LT AUC {auc:.3f}"
    ax.set(xlabel="LT score P(z=1|h)", ylabel="density", xlim=(0, 1), title=title)
    ax.legend()
    return canvas.render(fig, "lookalike threshold score distribution")


# ------------------------------------------------------------------------------------ confusion
@styled
def confusion(canvas: SvgCanvas, data: ConfusionData, class_names: Sequence[str]) -> Markup:
    """Counts of true (rows) vs predicted (columns) class; colour = share of the true class."""
    cm = np.asarray(data.matrix, dtype=np.int64)
    c = cm.shape[0]
    side = min(2.4 + 0.42 * c, 8.0)
    fig = canvas.figure(side, side)
    ax = fig.subplots()
    ax.grid(False)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{cm[i, j]:,}", ha="center", va="center", fontsize=9 if c <= 6 else 7,
                    color="white" if share[i, j] > 0.55 else "#1f2937")
    names = [mpl_text(n, 16) for n in class_names]
    ax.set_xticks(range(c), names, rotation=30 if c > 3 else 0, ha="right" if c > 3 else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="predicted class", ylabel="true class", title=mpl_text(data.title, 44))
    return canvas.render(fig, "confusion matrix")
