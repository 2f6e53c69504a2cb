"""Read a ``broaden simulate`` result folder (docs/results-format.md, format version 1) into ReportData.

Tables, trends, LT summaries and confusion matrices come from ``results.json``; the curves, the LT score
distribution, the per-strategy yield and the explorer come from the per-repeat Parquet files it lists.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from broaden import io
from broaden.report.data import (ConfusionData, ExplorerCase, ExplorerItem, LookalikeData, MetricColumn,
                                 MetricTable, ReportData, ScoreSet, Series, TrendPanel)
from broaden.report.items import MediaContext, audio_of, image_of
from broaden.report.sources.common import (TABLE2_COLUMNS, explorer_data, item_discrepancy, read_json,
                                           read_parquet, split_text)

TABLE1_COLUMNS = (
    MetricColumn("multiclass_loss", "MC loss (Eq. 11)"),
    MetricColumn("yield", "bad-case yield"),
    MetricColumn("confident_yield", "confident-error yield"),
)
NOISY = MetricColumn("noisy_share", "noisy labels", higher_is_better=False)
# A scenario's sub-population S (docs/simulate.md): what each group caught of it and how the model does on it.
SUBPOP_TABLE1 = (MetricColumn("s_captured", "S captured"), MetricColumn("s_share", "S share of the batch"))
SUBPOP_TABLE2 = (MetricColumn("s_accuracy", "S acc"), MetricColumn("non_s_accuracy", "non-S acc"),
                 MetricColumn("auc_macro", "AUC macro"))
TREND_METRICS = (  # (table, metric, plot title, y label)
    ("table2", "auc", "AUC on the test split", "AUC"),
    ("table2", "macro_f1", "macro-F1 on the test split", "macro-F1"),
    ("table1", "multiclass_loss", "Multiclass loss of the selected set", "MC loss (Eq. 11)"),
    ("table1", "yield", "Bad-case yield per group", "share the model got wrong"),
)


def is_simulation(path: Path) -> bool:
    return (path / "results.json").is_file() or ((path / "config.json").is_file() and (path / "repeats").is_dir())


def load_simulation(path: Path, ctx: MediaContext) -> ReportData:
    config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    results = read_json(path / "results.json") if (path / "results.json").is_file() else {}
    config = results.get("config") or config
    data = ReportData(title=f"Simulation on {config.get('dataset', path.name)}", kind="simulation",
                      source=str(path), meta=_meta(config, results),
                      class_names=[str(c) for c in config.get("class_names") or ()] or None)
    if not results:
        reason = "results.json is missing: no repeat has finished yet"
        data.missing.update(dict.fromkeys(("table1", "table2", "trends", "confusion"), reason))
    else:
        data.table1, data.table2 = _tables(results, config)
        data.trends = _trends(results, path)
        data.confusion = [ConfusionData(f"{g} — final model, last repeat", np.asarray(cm))
                          for g, cm in (results.get("confusion_matrix") or {}).items() if cm]
    files = _repeat_files(path, results)
    data.curves, data.curves_note = _curves(files["test_predictions"])
    data.lookalike = _lookalike(files["lookalike"], results, config)
    data.explorer = _explorer(files["case_study"], config, ctx)
    for section, value, reason in (
        ("curves", data.curves, "no test_predictions.parquet in the finished repeats"),
        ("lookalike", data.lookalike, "no group used the Lookalike Threshold (e.g. Stat-AL+LSB-LT), "
                                      "or no lookalike.parquet was written"),
        ("explorer", data.explorer, "no case_study.parquet: no LSB group ran, or it found no seeds"),
        ("confusion", data.confusion, "results.json has no confusion matrices"),
        ("trends", data.trends, "results.json has no per-round results"),
    ):
        if not value:
            data.missing.setdefault(section, reason)
    return data


def _meta(config: dict, results: dict) -> dict[str, str]:
    features = config.get("features") or {}
    done = results.get("repeats_done")
    meta = {
        "dataset": config.get("dataset"),
        "classes": len(config.get("class_names") or ()) or config.get("num_classes"),
        "encoder": features.get("encoder") if isinstance(features, dict) else None,
        "budget / round": config.get("budget"),
        "initial labels": config.get("initial"),
        "LSB share": config.get("lsb_share"),
        "rounds": config.get("rounds"),
        "repeats": None if done is None else f"{len(done)} of {config.get('repeats', len(done))}",
        "τ1 / τ2 / k": "{} / {} / {}".format(config.get("seed_threshold", "–"),
                                             config.get("lookalike_threshold", "–"), config.get("k", "–")),
        "latent": config.get("latent"),
        "discrepancy": config.get("discrepancy"),
        **_scenario_meta(config, results),
    }
    return {k: str(v) for k, v in meta.items() if v is not None}


def _scenario_meta(config: dict, results: dict) -> dict:
    scenario = config.get("scenario") or {}
    out = {}
    if scenario.get("kind") not in (None, "iid") or config.get("subpop_size"):
        out["scenario"] = f"{scenario.get('kind')}: S = {scenario.get('subpop')} ({config.get('subpop_size')} items)"
    if scenario.get("recent"):
        out["recent batch"] = f"{scenario['recent']} + {scenario.get('recent_subpop', 0)} of S"
    d = results.get("diagnosis")
    if d:
        lift = (d.get("lift") or {}).get("mean")
        verdicts = ", ".join(f"{k} {v}" for k, v in (d.get("verdicts") or {}).items())
        out["error clustering"] = (f"lift {lift:.2f}" if lift is not None else "lift –") + f" ({verdicts})"
    return out


def _values(summary) -> list[float]:
    if not isinstance(summary, dict):
        return []
    values = summary.get("values")
    if values is None:
        values = [summary.get("mean")]
    return [np.nan if v is None else float(v) for v in values]


def _tables(results: dict, config: dict) -> tuple[MetricTable | None, MetricTable | None]:
    ref = results.get("reference_group")
    tests = results.get("paired_tests") or {}
    n = len(results.get("repeats_done") or ())

    def notes(table: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for group, by_table in tests.items():
            per_metric = by_table.get(table, by_table) if isinstance(by_table, dict) else {}
            for metric, t in per_metric.items():
                if isinstance(t, dict) and t.get("mean_diff") is not None:
                    p = "" if t.get("wilcoxon_p") is None else f", p {t['wilcoxon_p']:.2f}"
                    out.setdefault(group, {})[metric] = (f"Δ {t['mean_diff']:+.3f} "
                                                         f"({t.get('wins', 0)}/{t.get('n', n)} up{p})")
        return out

    def table(key: str, columns, title: str, caption: str, inline: bool) -> MetricTable | None:
        rows = {g: {c.key: _values(m.get(c.key)) for c in columns} for g, m in (results.get(key) or {}).items()}
        if not rows:
            return None
        return MetricTable(title, caption, list(columns), rows, notes=notes(key), notes_inline=inline)

    cols1 = list(TABLE1_COLUMNS)
    if config.get("label_noise") or config.get("confusion"):
        cols1.append(NOISY)
    subpop = bool(config.get("subpop_size"))
    cols1 += list(SUBPOP_TABLE1) if subpop else []
    cols2 = list(TABLE2_COLUMNS) + (list(SUBPOP_TABLE2) if subpop else [])
    versus = f" the paired difference to {ref} over repeats (Δ, repeats where the group is higher, Wilcoxon p)." \
        if ref and tests else ""
    t1 = table("table1", cols1, "Table 1",
               f"Items each group selected in round 1, scored by the model that selected them against the true "
               f"labels ({config.get('discrepancy', 'ordinal')} discrepancy). {n} repeat(s)."
               + (f" Under each value:{versus}" if versus else ""), inline=True)
    t2 = table("table2", cols2, "Table 2",
               f"Each group's model retrained on the initial labels plus its selections, after "
               f"{config.get('rounds', 1)} round(s), on the fixed test split. {n} repeat(s)."
               + (f" Hover a value for{versus}" if versus else ""), inline=False)
    return t1, t2


def _repeat_files(path: Path, results: dict) -> dict[str, list[Path]]:
    listed = results.get("files") or {}
    out = {}
    for name in ("test_predictions", "lookalike", "case_study", "selections"):
        rel = listed.get(name) or sorted(str(p.relative_to(path))
                                         for p in path.glob(f"repeats/repeat-*/{name}.parquet"))
        out[name] = [path / r for r in rel]
    return out


def _curves(files: list[Path]) -> tuple[list[ScoreSet] | None, str]:
    table = read_parquet(files[:1], columns=["group", "label", "probs"])
    if table is None or table.num_rows == 0:
        return None, ""
    groups = table.column("group").to_pylist()
    labels = io.labels_array(table.column("label"))
    probs = io.list_matrix(table.column("probs"), dtype=np.float64)
    sets = []
    for g in dict.fromkeys(groups):
        mask = np.array([x == g for x in groups]) & (labels >= 0)
        sets.append(ScoreSet(g, labels[mask], probs[mask]))
    return sets, f"Final model of each group in the first finished repeat ({files[0].parent.name})."


def _trends(results: dict, path: Path) -> list[TrendPanel] | None:
    rounds = results.get("rounds") or {}
    panels = []
    for table, metric, title, ylabel in TREND_METRICS:
        series = []
        for group, entries in rounds.items():
            xs, ys, sds = [], [], []
            for e in entries:
                s = (e.get(table) or {}).get(metric) or {}
                if s.get("mean") is not None:
                    xs.append(e["round"])
                    ys.append(s["mean"])
                    sds.append(s.get("std") or 0.0)
            if xs:
                series.append(_banded(group, xs, ys, sds))
        if series:
            panels.append(TrendPanel(title, ylabel, series))
    per_strategy = _strategy_yield(_repeat_files(path, results)["selections"])
    if per_strategy:
        panels.append(per_strategy)
    panels += _auto_shares(results)
    return panels or None


def _auto_shares(results: dict) -> list[TrendPanel]:
    """For each Auto group: the share of the budget --strategy auto gave each arm, round by round."""
    panels = []
    for group, entries in (results.get("auto") or {}).items():
        arms = list(entries[0]["shares"]) if entries else []
        series = []
        for arm in arms:
            points = [(e["round"], e["shares"][arm]) for e in entries if e["shares"][arm].get("mean") is not None]
            if points:
                series.append(_banded(arm, [r for r, _ in points], [s["mean"] for _, s in points],
                                      [s.get("std") or 0.0 for _, s in points]))
        if series:
            panels.append(TrendPanel(f"{group}: share of the budget per strategy (--strategy auto)", "share", series))
    return panels


def _banded(name: str, xs, ys, sds) -> Series:
    y, sd = np.asarray(ys, float), np.asarray(sds, float)
    return Series(name, list(xs), y.tolist(), (y - sd).tolist(), (y + sd).tolist())


def _strategy_yield(files: list[Path]) -> TrendPanel | None:
    """Share of each strategy's picks the selecting model got wrong, per round (mean ± std over repeats)."""
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for f in files:
        t = read_parquet([f], columns=["round", "strategy", "label", "probs"])
        if t is None or t.num_rows == 0:
            continue
        wrong = io.list_matrix(t.column("probs")).argmax(axis=1) != io.labels_array(t.column("label"))
        rounds = t.column("round").to_numpy()
        strategies = np.asarray(t.column("strategy").to_pylist(), dtype=object)
        for s in dict.fromkeys(strategies.tolist()):
            for r in np.unique(rounds):
                mask = (strategies == s) & (rounds == r)
                if mask.any():
                    per[s][int(r)].append(float(wrong[mask].mean()))
    series = []
    for s, by_round in per.items():
        xs = sorted(by_round)
        vals = [by_round[r] for r in xs]
        series.append(_banded(s, xs, [np.mean(v) for v in vals],
                              [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]))
    if not series:
        return None
    return TrendPanel("Bad-case yield per strategy", "share the model got wrong", series)


def _lookalike(files: list[Path], results: dict, config: dict) -> list[LookalikeData] | None:
    table = read_parquet(files, columns=["round", "group", "z", "lt_score"])
    if table is None or table.num_rows == 0:
        return None
    summary = results.get("lookalike") or {}
    groups = np.asarray(table.column("group").to_pylist(), dtype=object)
    rounds = table.column("round").to_numpy()
    z = table.column("z").to_numpy()
    scores = table.column("lt_score").to_numpy(zero_copy_only=False).astype(float)
    panels = []
    for g in dict.fromkeys(groups.tolist()):
        have = (groups == g) & np.isfinite(scores)
        if not have.any():
            continue
        # Round 1 is the paper's protocol (and what results.json summarises); an LT that could not be fitted
        # in round 1 (too few bad cases) may exist in a later round, which is then shown instead.
        first = int(rounds[have].min())
        mask = have & (rounds == first)
        info = summary.get(g) or {}
        auc = (info.get("auc") or {}) if first == 1 else {}
        tau2 = info.get("threshold", config.get("lookalike_threshold"))
        auc_text = None
        if auc.get("mean") is not None:
            auc_text = f"{auc['mean']:.3f}" + (f" ± {auc['std']:.3f}" if auc.get("std") is not None else "")
        how = "mean ± std over repeats" if auc_text else "of the pooled items shown"
        panels.append(LookalikeData(
            name=f"{g}, round {first}", scores=scores[mask], bad=z[mask] == 1, tau2=tau2,
            auc=auc.get("mean"), auc_text=auc_text,
            note=f"Held-out labelled items of {len(files)} repeat(s) pooled; bad: d > τ1 = "
                 f"{config.get('seed_threshold', '?')}, consistent: ŷ = y. LT AUC: {how}."))
    return panels or None


def _explorer(files: list[Path], config: dict, ctx: MediaContext):
    table = read_parquet(files[:1])
    if table is None or table.num_rows == 0:
        return None
    fields = (config.get("features") or {}).get("fields") if isinstance(config.get("features"), dict) else None
    specs = config.get("group_specs") or {}
    default_kind = config.get("discrepancy", "ordinal")
    cases: dict[tuple, ExplorerCase] = {}
    for row in table.to_pylist():
        group = row.get("group")
        kind = (specs.get(group) or {}).get("discrepancy") or default_kind
        key = (row.get("round"), group, row.get("seed_id"))
        if key not in cases:
            seed = _item(row, "seed_", kind, fields, ctx)
            seed.strategy = group
            cases[key] = ExplorerCase(seed, [], context=f"round {row.get('round')}")
        nb = _item(row, "neighbor_", kind, fields, ctx)
        nb.rank, nb.similarity = row.get("neighbor_rank"), _num(row.get("similarity"))
        nb.lookalike = _num(row.get("lookalike_score"))
        nb.strategy, nb.selected = group, row.get("selected")
        cases[key].neighbours.append(nb)
    for case in cases.values():
        case.neighbours.sort(key=lambda n: (n.rank or 0))
    note = (f"Seeds (labelled bad cases) next to their nearest pool neighbours, from {files[0].parent.name}; "
            "each group and round lists its own seeds. Labels are the true labels; ✗ marks items the model got "
            "wrong.")
    return explorer_data(list(cases.values()), " ".join(filter(None, [note, ctx.note()])))


def _item(row: dict, prefix: str, kind: str, fields, ctx: MediaContext) -> ExplorerItem:
    label, probs = row.get(f"{prefix}label"), row.get(f"{prefix}probs")
    return ExplorerItem(
        id=str(row.get(f"{prefix}id")), label=label, probs=probs,
        fields=split_text(row.get(f"{prefix}text"), fields),
        image=image_of(row, prefix, ctx), audio=audio_of(row, prefix, ctx),
        discrepancy=item_discrepancy(label, probs, kind),
    )


def _num(x):
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)
