"""Read a rounds workspace (``broaden init`` / ``round …``; docs/rounds.md) into ReportData, read-only.

The ledger is opened with SQLite's ``mode=ro`` and queried through :class:`broaden.rounds.Ledger`, so a
report never migrates, locks or writes a workspace that a team is using. Labels are resolved with the
rounds' own rule (:meth:`broaden.rounds.Workspace.resolve`); bad-case yields use its Beta posterior.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from broaden import io
from broaden.metrics import discrepancy
from broaden.report.data import (ConfusionData, ExplorerCase, ExplorerItem, LookalikeData, MetricColumn,
                                 MetricTable, ReportData, ScoreSet, Series, TrendPanel)
from broaden.report.items import MediaContext, file_media, text_fields
from broaden.report.sources.common import (CALIBRATION_COLUMNS, TABLE2_COLUMNS, ReportError, explorer_data,
                                           flat_metrics, item_discrepancy, read_parquet)

LEDGER_FILE = "ledger.sqlite"
YIELD_LEVEL = 0.9
TABLE1_COLUMNS = (
    MetricColumn("multiclass_loss", "MC loss (Eq. 11)"),
    MetricColumn("yield", "bad-case yield"),
    MetricColumn("labelled", "labelled", higher_is_better=None, digits=0),
)
TREND_METRICS = (("auc", "AUC"), ("macro_f1", "macro-F1"), ("accuracy", "accuracy"),
                 ("multiclass_loss", "MC loss (Eq. 11)"))


def is_workspace(path: Path) -> bool:
    return (path / LEDGER_FILE).is_file()


@contextlib.contextmanager
def read_only_ledger(path: Path) -> Iterator:
    from broaden.rounds import SCHEMA_VERSION, Ledger
    from broaden.rounds.schema import schema_version

    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.row_factory = sqlite3.Row
        version = schema_version(conn)
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{path}: not a readable SQLite ledger ({exc})") from exc
    try:
        if version > SCHEMA_VERSION:
            raise ReportError(f"{path}: ledger schema version {version} is newer than this broaden reads "
                              f"({SCHEMA_VERSION}); upgrade broaden")
        yield Ledger(conn, path)
    finally:
        conn.close()


def load_workspace(path: Path, ctx: MediaContext) -> ReportData:
    from broaden.rounds import Workspace
    from broaden.rounds.finish import EVAL_PREDICTIONS
    from broaden.rounds.stopping import round_tallies, workspace_signals

    ws = Workspace(path)
    cfg = ws.config
    with read_only_ledger(path / LEDGER_FILE) as ledger:
        rounds = [dict(r) for r in ledger.rounds()]
        items = [dict(r) for r in ledger.items()]
        resolved = ws.resolve(ledger).items  # the workspace's label_resolution, as training used
        allocations = {r["round"]: json.loads(a) for r in rounds
                       if (a := ledger.get_meta(f"allocation:{r['round']}"))}
    labels = {key: res.label for key, res in resolved.items() if res.label is not None}
    for it in items:
        it["label"] = labels.get((it["item_key"], it["round"]))
    batches = {r["round"]: _batch(path, r["round"], cfg) for r in rounds}
    finished = [r for r in rounds if r["status"] == "finished"]
    metrics = {r["round"]: json.loads(r["metrics"]) if r.get("metrics") else {} for r in finished}
    evals = {n: m["eval"] for n, m in metrics.items() if m.get("eval")}

    data = ReportData(title=f"Annotation rounds: {path.resolve().name}", kind="workspace", source=str(path),
                      meta=_meta(cfg, rounds, items), class_names=list(cfg.class_names),
                      positive=cfg.positive)
    data.table1 = _table1(items, batches, cfg)
    if evals:
        data.table2 = MetricTable(
            "Table 2", "The classifier `round finish` trained on everything labelled up to each round, on the "
            "fixed eval set (config 'eval'). One model per round, so no ± std.",
            [*TABLE2_COLUMNS, *CALIBRATION_COLUMNS], {f"round {n}": {k: [v] for k, v in flat_metrics(ev).items()}
                                   for n, ev in sorted(evals.items())}, row_header="round")
    data.curves = _curves(path, finished)
    stopping = workspace_signals(rounds, round_tallies(items, labels))
    data.trends = ((_trends(evals, items, batches, cfg) or []) + _auto_panels(allocations, metrics)
                   + _stopping_panels(stopping) or None)
    if stopping:
        data.meta["when to stop"] = stopping[-1].reading
    if allocations:
        last = allocations[max(allocations)]
        if last.get("diagnosis"):
            data.meta["error clustering"] = last["diagnosis"]["reading"]
    data.lookalike = _lookalike(items, cfg)
    data.explorer = _explorer(items, batches, _batch_schema(path, rounds), cfg, ctx)
    latest = max(evals) if evals else None
    if latest is not None and evals[latest].get("confusion_matrix"):
        data.confusion = [ConfusionData(f"round {latest} model on the eval set",
                                        np.asarray(evals[latest]["confusion_matrix"]))]
    no_eval = ("no finished round has eval metrics (set 'eval' in the config and run `broaden round finish`)"
               if not evals else "")
    for section, value, reason in (
        ("table1", data.table1, "no selected item has a resolved label yet; import labels with "
                                "`broaden round import`"),
        ("table2", data.table2, no_eval),
        ("curves", data.curves, f"no finished round stores eval-set predictions (rounds/NNNN/{EVAL_PREDICTIONS}; "
                                "`round finish` writes them when the config sets 'eval')"),
        ("trends", data.trends, no_eval or "nothing to plot yet"),
        ("lookalike", data.lookalike, "no labelled item was selected with a Lookalike score (strategy lsb-lt)"),
        ("explorer", data.explorer, "no item was selected by LSB (strategy lsb or lsb-lt)"),
        ("confusion", data.confusion, no_eval or "the latest eval metrics hold no confusion matrix"),
    ):
        if not value:
            data.missing[section] = reason
    return data


def _meta(cfg, rounds: list[dict], items: list[dict]) -> dict[str, str]:
    done = sum(r["status"] == "finished" for r in rounds)
    labelled = sum(it["label"] is not None for it in items)
    return {
        "classes": str(len(cfg.class_names)),
        "strategy": cfg.strategy,
        "budget / round": str(cfg.budget),
        "rounds": f"{done} finished, {len(rounds) - done} open",
        "items sent": f"{len(items):,}",
        "labelled": f"{labelled:,}",
        "τ1 / τ2 / k": f"{cfg.seed_threshold} / {cfg.lookalike_threshold} / {cfg.k}",
        "discrepancy": cfg.discrepancy,
    }


def _batch(path: Path, number: int, cfg) -> dict[str, dict]:
    """A round's batch rows keyed by the ledger's item key (``str(id)``); empty when the file is gone."""
    table = read_parquet([path / "rounds" / f"{number:04d}" / "batch.parquet"])
    if table is None:
        return {}
    drop = [c for c in (cfg.cols.embedding,) if c in table.column_names]
    rows = table.drop_columns(drop).to_pylist()
    return {str(r[cfg.cols.id]): r for r in rows}


def _probs(it: dict, batches: dict, cfg) -> list[float] | None:
    return (batches.get(it["round"]) or {}).get(it["item_key"], {}).get(cfg.cols.probs)


def _table1(items: list[dict], batches: dict, cfg) -> MetricTable | None:
    from broaden.rounds import beta_yield

    by_strategy: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        if it["label"] is not None:
            by_strategy[it["strategy"]].append(it)
    rows, notes = {}, {}
    for name, its in sorted(by_strategy.items()):
        scored = [(it["label"], p) for it in its if (p := _probs(it, batches, cfg)) is not None]
        loss = (float(discrepancy(np.array([l for l, _ in scored]), np.asarray([p for _, p in scored], float),
                                  cfg.discrepancy).mean()) if scored else np.nan)
        judged = [it for it in its if it["pred"] is not None]
        bad = sum(it["label"] != it["pred"] for it in judged)
        y = beta_yield(bad, len(judged), YIELD_LEVEL)
        rows[name] = {"multiclass_loss": [loss], "yield": [y.mean if judged else np.nan], "labelled": [len(its)]}
        notes[name] = {"yield": f"{bad} of {len(judged)} wrong; {YIELD_LEVEL:.0%} interval "
                                f"{y.low:.2f}–{y.high:.2f}"}
    if not rows:
        return None
    return MetricTable(
        "Table 1", "Labelled items of every round, per strategy that chose them. Loss: Eq. 11 with the "
        f"probabilities they were selected with ({cfg.discrepancy}). Yield: share the selecting model got wrong, "
        "as the Beta(1 + bad, 1 + good) posterior mean.", list(TABLE1_COLUMNS), rows, row_header="strategy",
        notes=notes)


def _curves(path: Path, finished: list[dict]) -> list[ScoreSet] | None:
    from broaden.rounds.finish import EVAL_PREDICTIONS

    sets = []
    for r in finished:
        t = read_parquet([path / "rounds" / f"{r['round']:04d}" / EVAL_PREDICTIONS], columns=["label", "probs"])
        if t is not None and t.num_rows:
            labels = io.labels_array(t.column("label"))
            keep = labels >= 0
            sets.append(ScoreSet(f"round {r['round']}", labels[keep],
                                 io.list_matrix(t.column("probs"), dtype=np.float64)[keep]))
    return sets or None


def _trends(evals: dict, items: list[dict], batches: dict, cfg) -> list[TrendPanel] | None:
    from broaden.rounds import beta_yield

    panels = []
    xs = sorted(evals)
    for key, label in TREND_METRICS:
        ys = [flat_metrics(evals[n]).get(key, np.nan) for n in xs]
        if xs and np.isfinite(ys).any():
            panels.append(TrendPanel(f"{label} on the eval set", label, [Series("model", xs, ys)]))
    tally: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for it in items:
        if it["label"] is not None and it["pred"] is not None:
            t = tally[it["strategy"]][it["round"]]
            t[0] += 1
            t[1] += int(it["label"] != it["pred"])
    series = []
    for name, per_round in sorted(tally.items()):
        rs = sorted(per_round)
        ys = [beta_yield(per_round[r][1], per_round[r][0], YIELD_LEVEL) for r in rs]
        series.append(Series(name, rs, [y.mean for y in ys], [y.low for y in ys], [y.high for y in ys]))
    if series:
        panels.append(TrendPanel("Bad-case yield per strategy",
                                 f"posterior mean, {YIELD_LEVEL:.0%} interval", series))
    return panels or None


def _auto_panels(allocations: dict[int, dict], metrics: dict[int, dict]) -> list[TrendPanel]:
    """--strategy auto: the share each arm got per round, and each strategy's measured value per round."""
    panels = []
    arms = sorted({a for alloc in allocations.values() for a in alloc["shares"]})
    if arms:
        rs = sorted(allocations)
        panels.append(TrendPanel("--strategy auto: share of the budget per strategy", "share",
                                 [Series(a, rs, [allocations[r]["shares"].get(a, np.nan) for r in rs]) for a in arms]))
    values = {n: m["strategy_values"] for n, m in metrics.items() if m.get("strategy_values")}
    names = sorted({s for v in values.values() for s in v})
    if names:
        rs = sorted(values)
        panels.append(TrendPanel("Measured value per strategy (log-loss lost per item without its items)",
                                 "value per item", [Series(s, rs, [(values[r].get(s) or {}).get("value", np.nan)
                                                                   for r in rs]) for s in names]))
    return panels


def _stopping_panels(signals) -> list[TrendPanel]:
    """Agreement of each round's model with the previous one on the stop set (the stabilising-predictions
    signal, :mod:`broaden.rounds.stopping`), when at least two rounds recorded predictions."""
    from broaden.rounds.stopping import KAPPA_THRESHOLD, STABLE_ROUNDS

    xs = [s.round for s in signals if s.kappa is not None]
    if not xs:
        return []
    return [TrendPanel(f"When to stop: agreement with the previous round (stable: κ ≥ {KAPPA_THRESHOLD:g} for "
                       f"{STABLE_ROUNDS} rounds)",
                       "Cohen's κ on the stop set", [Series("model", xs, [s.kappa for s in signals
                                                                          if s.kappa is not None])])]


def _lookalike(items: list[dict], cfg) -> list[LookalikeData] | None:
    rows = [it for it in items if it["lookalike_score"] is not None and it["label"] is not None
            and it["pred"] is not None]
    if not rows:
        return None
    return [LookalikeData(
        name="LSB-LT picks, labelled", scores=np.array([it["lookalike_score"] for it in rows], float),
        bad=np.array([it["label"] != it["pred"] for it in rows]), tau2=cfg.lookalike_threshold,
        bad_label="model wrong", consistent_label="model right",
        note="Items LSB-LT sent that annotators have labelled; bad: the selecting model got it wrong. Every "
             "one passed the LT filter, so the scores start at τ2 and the AUC only ranks within them.")]


def _batch_schema(path: Path, rounds: list[dict]) -> pa.Schema | None:
    files = [path / "rounds" / f"{r['round']:04d}" / "batch.parquet" for r in rounds]
    return next((io.read_schema(f) for f in files if f.is_file()), None)


def _explorer(items: list[dict], batches: dict, schema: pa.Schema | None, cfg, ctx: MediaContext):
    from broaden.rounds.formats import data_fields

    lsb_items = [it for it in items if it["seed_id"]]
    if not lsb_items:
        return None
    text, media = (data_fields(schema, id_col=cfg.cols.id, text_fields=cfg.text_fields,
                               media_fields=cfg.media_fields) if schema is not None else ([], []))
    text = [t for t in text if t != cfg.embedding_version_col]
    seeds = _seed_rows({it["seed_id"].split(",")[0] for it in lsb_items}, items, batches, cfg)
    cases: dict[tuple, ExplorerCase] = {}
    for it in lsb_items:
        seed_key = it["seed_id"].split(",")[0]
        key = (it["round"], seed_key)
        if key not in cases:
            seed_row, seed_label = seeds.get(seed_key, ({}, None))
            cases[key] = ExplorerCase(_row_item(seed_key, seed_row, seed_label, text, media, cfg, ctx), [],
                                      context=f"round {it['round']}")
        row = (batches.get(it["round"]) or {}).get(it["item_key"], {})
        nb = _row_item(it["item_key"], row, it["label"], text, media, cfg, ctx)
        nb.rank = row.get("neighbor_rank")
        nb.similarity, nb.lookalike, nb.strategy = it["similarity"], it["lookalike_score"], it["strategy"]
        nb.selected = True
        cases[key].neighbours.append(nb)
    for case in cases.values():
        case.neighbours.sort(key=lambda n: (n.rank or 0, n.id))
    note = ("Seeds (labelled bad cases) next to the pool items LSB sent because of them; labels are the "
            "annotators' resolved labels (– while pending); ✗ marks items the model got wrong.")
    return explorer_data(list(cases.values()), " ".join(filter(None, [note, ctx.note()])))


def _seed_rows(keys: set[str], items: list[dict], batches: dict, cfg) -> dict[str, tuple[dict, int | None]]:
    """Seed rows (text, media, probs) and labels, from the initial labelled file and earlier batches."""
    found: dict[str, tuple[dict, int | None]] = {}
    labels = {it["item_key"]: it["label"] for it in items if it["label"] is not None}
    for rows in batches.values():
        for key in keys & rows.keys():
            if key in labels:
                found[key] = (rows[key], labels[key])
    missing = keys - found.keys()
    if missing and cfg.labeled and Path(cfg.labeled).exists():
        for batch in io.iter_batches(cfg.labeled):
            keep = [i for i, k in enumerate(batch.column(cfg.cols.id).to_pylist()) if str(k) in missing]
            for row in batch.take(pa.array(keep, pa.int64())).to_pylist():
                found[str(row[cfg.cols.id])] = (row, row.get(cfg.cols.label))
    return found


def _row_item(key: str, row: dict, label, text: list[str], media: list[str], cfg, ctx: MediaContext) -> ExplorerItem:
    probs = row.get(cfg.cols.probs)
    item = ExplorerItem(id=key, label=label, probs=probs, fields=text_fields(row, {c: c for c in text}),
                        discrepancy=item_discrepancy(label, probs, cfg.discrepancy))
    for name in media:
        value = row.get(name)
        found = file_media(name, str(value), ctx) if value else None
        if found is None:
            item.fields.update(text_fields(row, {name: name}))
        elif found[0] == "image":
            item.image = item.image or found[1]
        else:
            item.audio = item.audio or found[1]
    return item
