"""One function per report section: :class:`ReportData` in, escaped HTML (:class:`Markup`) out.

A section whose data is missing renders a short "not available in this result" note with the reason the
source reader gave, so a partial result folder still produces a complete page.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from broaden.metrics import mean_std, roc_auc
from broaden.report import plots
from broaden.report.data import ExplorerCase, ExplorerItem, MetricColumn, MetricTable, ReportData
from broaden.report.safe import Markup, h, join
from broaden.console import fmt

TEXT_PREVIEW_CHARS = 600


@dataclass(frozen=True)
class Section:
    id: str
    short: str
    title: str
    render: Callable[[ReportData, plots.Palette, plots.SvgCanvas], Markup]


def not_available(data: ReportData, section_id: str) -> Markup:
    reason = data.missing.get(section_id, "")
    return h("p", "Not available in this result", ": " + reason if reason else ".", class_="na")


# -------------------------------------------------------------------------------------- tables
def best_rows(table: MetricTable, key: str, higher: bool | None) -> set[str]:
    """Rows whose mean is the best of the column (all of them on a tie).

    None are marked when fewer than two rows have a value or when every row ties: nothing stands out.
    """
    if higher is None:
        return set()
    means = {r: mean_std(cols.get(key, []))[0] for r, cols in table.rows.items()}
    finite = {r: m for r, m in means.items() if math.isfinite(m)}
    if len(finite) < 2:
        return set()
    target = max(finite.values()) if higher else min(finite.values())
    best = {r for r, m in finite.items() if abs(m - target) <= 1e-12 * max(1.0, abs(target))}
    return best if len(best) < len(finite) else set()


def metric_table(table: MetricTable, palette: plots.Palette, table_id: str) -> Markup:
    best = {c.key: best_rows(table, c.key, c.higher_is_better) for c in table.columns}
    head = h("tr", h("th", table.row_header, scope="col"), *(h("th", c.label, _direction(c), scope="col")
                                                             for c in table.columns))
    body = []
    for name, cols in table.rows.items():
        cells = [h("th", h("span", class_="swatch", style=f"background:{palette[name]}"), name, scope="row")]
        for c in table.columns:
            mean, std = mean_std(cols.get(c.key, []))
            text = fmt(mean if math.isfinite(mean) else None, c.digits)
            content = [h("span", text, class_="mean")]
            if std is not None:
                content.append(h("span", f" ± {std:.{c.digits}f}", class_="std"))
            note = table.notes.get(name, {}).get(c.key)
            if note and table.notes_inline:
                content.append(h("div", note, class_="note"))
            is_best = name in best[c.key]
            tip = [t for t in ("best in this column" if is_best else None,
                               None if table.notes_inline else note) if t]
            cells.append(h("td", *content, class_="num best" if is_best else "num",
                           title="; ".join(tip) or None))
        body.append(h("tr", *cells))
    return join([
        h("p", table.caption, class_="hint"),
        h("div", h("table", h("thead", head), h("tbody", *body), class_="metrics", id=table_id), class_="scroll"),
        h("p", "Mean ± sample std over repeats; ", h("span", "highlighted", class_="best-key"),
          " = best mean in its column (↑ higher is better, ↓ lower is better).", class_="hint"),
    ])


def _direction(c: MetricColumn) -> Markup | None:
    if c.higher_is_better is None:
        return None
    return join([" ", h("span", "↑" if c.higher_is_better else "↓", class_="dir",
                        title="higher is better" if c.higher_is_better else "lower is better")])


def _table_section(attr: str) -> Callable:
    def render(data: ReportData, palette: plots.Palette, canvas: plots.SvgCanvas) -> Markup:
        table = getattr(data, attr)
        if table is None or not table.rows:
            return not_available(data, attr)
        return metric_table(table, palette, f"{attr}-table")

    return render


# -------------------------------------------------------------------------------------- plots
def figure(svg: Markup, caption: str = "") -> Markup:
    return h("figure", svg, h("figcaption", caption) if caption else None, class_="plot")


def render_curves(data: ReportData, palette: plots.Palette, canvas: plots.SvgCanvas) -> Markup:
    if not data.curves:
        return not_available(data, "curves")
    positive = "label ≠ 0" if data.positive is None else "label ∈ {" + ", ".join(
        data.class_name(c) for c in data.positive) + "}"
    caption = f"Binary view: positive = {positive}, score = P(positive). {data.curves_note}".strip()
    svg, aucs = plots.pr_roc(canvas, data.curves, palette, positive=data.positive)
    skipped = [s.name for s in data.curves if s.name not in aucs]
    if skipped:
        caption += f" Not drawn (only one class present): {', '.join(skipped)}."
    rel, eces = plots.reliability(canvas, data.curves, palette)
    rel_caption = ("Calibration (Guo et al. 2017): items binned by their largest probability; a calibrated "
                   "model's accuracy in each bin equals its mean confidence (the diagonal). ECE = Σ (|B|/n)·"
                   "|accuracy(B) − confidence(B)| over the bins.")
    return join([legend(palette, aucs, lambda n: f"AUC {aucs[n]:.3f}"), figure(svg, caption),
                 legend(palette, eces, lambda n: f"ECE {eces[n]:.3f}"), figure(rel, rel_caption)])


def legend(palette: plots.Palette, names, detail: Callable[[str], str] | None = None) -> Markup:
    """The page's legend: the same colour for a name in every plot, so one legend serves a section."""
    return h("ul", *(h("li", h("span", class_="swatch", style=f"background:{palette[n]}"), n,
                       h("span", detail(n), class_="detail") if detail else None) for n in names),
             class_="legend")


def render_trends(data: ReportData, palette: plots.Palette, canvas: plots.SvgCanvas) -> Markup:
    if not data.trends:
        return not_available(data, "trends")
    names = dict.fromkeys(s.name for p in data.trends for s in p.series)
    return join([legend(palette, names),
                 h("div", *(figure(plots.trend(canvas, p, palette)) for p in data.trends), class_="grid")])


def render_lookalike(data: ReportData, palette: plots.Palette, canvas: plots.SvgCanvas) -> Markup:
    panels = [lt for lt in data.lookalike or () if len(lt.scores)]
    if not panels:
        return not_available(data, "lookalike")
    return h("div", *(_lookalike_panel(lt, canvas) for lt in panels), class_="grid wide")


def _lookalike_panel(lt, canvas: plots.SvgCanvas) -> Markup:
    scores, bad = np.asarray(lt.scores, float), np.asarray(lt.bad, bool)
    auc = lt.auc if lt.auc is not None else roc_auc(bad.astype(np.int64), scores)
    facts = [("LT AUC", lt.auc_text or fmt(auc if math.isfinite(auc) else None)),
             ("τ2", fmt(lt.tau2) if lt.tau2 is not None else "–"),
             ("bad cases", f"{int(bad.sum()):,}"), ("consistent", f"{int((~bad).sum()):,}")]
    if lt.tau2 is not None:
        kept = scores > lt.tau2
        facts.append(("bad kept (> τ2)", f"{kept[bad].mean():.0%}" if bad.any() else "–"))
        facts.append(("consistent kept", f"{kept[~bad].mean():.0%}" if (~bad).any() else "–"))
    return h("div", stat_list(facts), figure(plots.lookalike(canvas, lt, auc), lt.note), class_="panel")


def render_confusion(data: ReportData, palette: plots.Palette, canvas: plots.SvgCanvas) -> Markup:
    panels = [cm for cm in data.confusion or () if np.size(cm.matrix)]
    if not panels:
        return not_available(data, "confusion")
    names = [data.class_name(c) for c in range(np.shape(panels[0].matrix)[0])]
    figs = [figure(plots.confusion(canvas, cm, names)) for cm in panels]
    return join([h("p", "Rows: human label; columns: the model's argmax; colour: share of the row.", class_="hint"),
                 h("div", *figs, class_="grid")])


def stat_list(facts: Sequence[tuple[str, str]]) -> Markup:
    return h("dl", *(h("div", h("dt", k), h("dd", v)) for k, v in facts), class_="stats")


# ----------------------------------------------------------------------------------- explorer
def render_explorer(data: ReportData, palette: plots.Palette, canvas: plots.SvgCanvas) -> Markup:
    ex = data.explorer
    if ex is None or not ex.cases:
        return not_available(data, "explorer")
    strategies = sorted({n.strategy for c in ex.cases for n in c.neighbours if n.strategy})
    classes = sorted({c.seed.label for c in ex.cases if c.seed.label is not None})
    s_index = {s: i for i, s in enumerate(strategies)}

    def options(label: str, values: list[tuple[int, str]], ident: str) -> Markup:
        return h("label", label, " ", h("select", h("option", "all", value=""),
                                        *(h("option", text, value=str(v)) for v, text in values),
                                        id=ident, class_="ex-filter"))

    controls = h(
        "div",
        options("Class of the seed", [(c, data.class_name(c)) for c in classes], "ex-class"),
        options("Strategy", list(enumerate(strategies)), "ex-strategy"),
        h("span", f"{len(ex.cases)} of {len(ex.cases)} seeds shown", id="ex-count", class_="count",
          data_total=str(len(ex.cases))),
        class_="ex-controls",
    )

    def sort_header(label: str, key: str, title: str) -> Markup:
        return h("th", h("button", label, type="button", class_="sort", data_key=key, title=title), scope="col",
                 aria_sort="none")

    head = h("tr", h("th", "", scope="col"), sort_header("item", "id", "sort by seed id"),
             h("th", "content", scope="col"), h("th", "label", scope="col"), h("th", "prediction", scope="col"),
             sort_header("d(x)", "d", "sort by the seed's discrepancy"),
             sort_header("similarity", "sim", "sort by the neighbours' mean similarity"),
             sort_header("LT score", "lt", "sort by the neighbours' highest LT score"),
             h("th", "strategy", scope="col"))
    bodies = [_case(case, data, palette, s_index) for case in ex.cases]
    note = ex.note
    if ex.total_seeds and ex.total_seeds > len(ex.cases):
        note = f"Showing the {len(ex.cases):,} seeds with the largest discrepancy of {ex.total_seeds:,}. {note}"
    return join([
        h("p", note, class_="hint") if note else None,
        controls,
        h("div", h("table", h("thead", head), *bodies, class_="explorer", id="explorer-table"), class_="scroll"),
    ])


def _case(case: ExplorerCase, data: ReportData, palette: plots.Palette, s_index: dict[str, int]) -> Markup:
    sims = [n.similarity for n in case.neighbours if n.similarity is not None]
    lts = [n.lookalike for n in case.neighbours if n.lookalike is not None]
    strategies = sorted({s_index[n.strategy] for n in case.neighbours if n.strategy in s_index})
    rows = [_item_row(case.seed, data, palette, seed=True, context=case.context)]
    rows += [_item_row(n, data, palette, seed=False) for n in case.neighbours]
    return h(
        "tbody", *rows, class_="case",
        data_id=case.seed.id,
        data_class="" if case.seed.label is None else str(case.seed.label),
        data_strategies=" ".join(map(str, strategies)),
        data_d=_num_attr(case.seed.discrepancy),
        data_sim=_num_attr(float(np.mean(sims)) if sims else None),
        data_lt=_num_attr(max(lts) if lts else None),
    )


def _num_attr(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.6g}"


def _item_row(item: ExplorerItem, data: ReportData, palette: plots.Palette, *, seed: bool,
              context: str | None = None) -> Markup:
    if seed:
        role = join([h("span", "seed", class_="role seed"), h("div", context, class_="ctx") if context else ""])
    else:
        role = h("span", f"#{item.rank}" if item.rank else "nb", class_="role", title="neighbour rank")
    predicted = int(np.argmax(item.probs)) if item.probs else None
    wrong = item.label is not None and predicted is not None and predicted != item.label
    label = h("span", data.class_name(item.label), class_="wrong" if wrong else None,
              title="the model got this one wrong" if wrong else None) if item.label is not None else "–"
    strategy = join([
        h("span", item.strategy, class_="tag", style=f"--c:{palette[item.strategy]}", title=item.strategy)
        if item.strategy else "",
        h("span", "in batch", class_="inbatch", title="selected for annotation") if item.selected else "",
    ])
    return h(
        "tr",
        h("td", role),
        h("td", h("code", item.id), class_="id"),
        h("td", _content(item), class_="content"),
        h("td", label),
        h("td", prob_bars(item.probs, item.label, data) if item.probs else "–"),
        h("td", _fixed(item.discrepancy), class_="num"),
        h("td", _fixed(item.similarity), class_="num"),
        h("td", _fixed(item.lookalike), class_="num"),
        h("td", strategy),
        class_="seed-row" if seed else "nb-row",
    )


def _fixed(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _content(item: ExplorerItem) -> Markup:
    parts = []
    if item.image:
        parts.append(h("img", src=item.image, alt=f"image of item {item.id}", class_="thumb"))
    if item.audio:
        parts.append(h("audio", controls=True, preload="none", src=item.audio, class_="clip"))
    if item.fields:
        parts.append(h("dl", *(h("div", h("dt", k), h("dd", _preview(v), title=v if len(v) > TEXT_PREVIEW_CHARS
                                                                           else None))
                               for k, v in item.fields.items()), class_="fields"))
    return join(parts) if parts else Markup("–")


def _preview(text: str) -> str:
    return text if len(text) <= TEXT_PREVIEW_CHARS else text[:TEXT_PREVIEW_CHARS] + "…"


def prob_bars(probs: Sequence[float], label: int | None, data: ReportData) -> Markup:
    """The probability vector as small bars: the argmax filled in accent colour, the human label outlined."""
    p = np.asarray(probs, dtype=float)
    top = int(np.argmax(p))
    bars = [h("span", class_="bar" + (" top" if c == top else "") + (" lab" if c == label else ""),
              style=f"height:{max(2.0, 100.0 * float(v)):.1f}%")
            for c, v in enumerate(p)]
    title = " · ".join(f"{data.class_name(c)}: {v:.3f}" for c, v in enumerate(p))
    return h("span", h("span", *bars, class_="pbar", title=title, role="img", aria_label=title),
             h("span", f"{data.class_name(top)} {p[top]:.2f}", class_="ptop"), class_="pred")


SECTIONS: tuple[Section, ...] = (
    Section("table1", "Table 1", "Table 1 — how valuable is each selected set?", _table_section("table1")),
    Section("table2", "Table 2", "Table 2 — the model after retraining", _table_section("table2")),
    Section("curves", "Curves", "Precision–recall, ROC and reliability", render_curves),
    Section("trends", "Trends", "Per-round trends and bad-case yield", render_trends),
    Section("lookalike", "Lookalike", "Lookalike threshold: bad vs consistent items", render_lookalike),
    Section("explorer", "Explorer", "Bad-case explorer", render_explorer),
    Section("confusion", "Confusion", "Confusion matrix of the latest model", render_confusion),
)
