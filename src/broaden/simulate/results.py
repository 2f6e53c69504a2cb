"""Aggregate finished repeats into results.json / table1.csv / table2.csv / rounds.csv and print them.

The format is documented in docs/results-format.md; ``broaden report`` reads these files only.
"""
from __future__ import annotations

import csv
import io as _io
import json
from pathlib import Path

from broaden.io import write_text
from broaden.metrics import METRIC_NAMES, to_jsonable
from broaden.simulate.annotators import ANNOTATOR_FIELDS
from broaden.simulate.groups import REFERENCE_GROUP, REFIT_SUFFIX
from broaden.simulate.protocol import TABLE1_METRICS, TABLE2_METRICS
from broaden.simulate.stats import paired_test, summarize

FORMAT_VERSION = 1
LOOKALIKE_FIELDS = ("auc", "n_bad_cases", "n_seeds", "n_candidates", "n_lsb_selected")
FRAME_NAMES = ("initial", "selections", "test_predictions", "lookalike", "case_study")
OPTIONAL_FRAMES = ("votes",)  # listed under "files" only when a run wrote them (ActiveLab)


def _summaries(values_by_metric: dict[str, list]) -> dict:
    return {m: summarize(v) for m, v in values_by_metric.items()}


def _collect(records: list[dict], group: str, round_index: int, table: str, metrics) -> dict[str, list]:
    return {m: [rec["rounds"][round_index]["groups"][group][table].get(m) for rec in records] for m in metrics}


def aggregate(config: dict, records: list[dict], groups: list[str], out: Path) -> dict:
    """results.json content from the per-repeat records (sorted by repeat)."""
    records = sorted(records, key=lambda r: r["repeat"])
    n_rounds = min(len(r["rounds"]) for r in records)
    last = n_rounds - 1
    table1 = {g: _summaries(_collect(records, g, 0, "table1", TABLE1_METRICS)) for g in groups}
    raw2 = {"Initial": {m: [r["initial"].get(m) for r in records] for m in TABLE2_METRICS}}
    raw2.update({g: _collect(records, g, last, "table2", TABLE2_METRICS) for g in groups})
    table2 = {g: _summaries(v) for g, v in raw2.items()}
    raw1 = {g: _collect(records, g, 0, "table1", TABLE1_METRICS) for g in groups}
    ref = REFERENCE_GROUP if REFERENCE_GROUP in groups else groups[0]

    def versus(reference: str) -> dict:
        return {g: {"table1": {m: paired_test(raw1[g][m], raw1[reference][m])
                               for m in TABLE1_METRICS if m != "n_selected"},
                    "table2": {m: paired_test(raw2[g][m], raw2[reference][m]) for m in TABLE2_METRICS}}
                for g in groups if g != reference}

    tests = versus(ref)
    # The fair control of DESIGN §3a (uncertainty sampling on the snapshot refit with the recent batch) is a
    # second reference wherever it ran: a method claim must hold against it too.
    controls = [g for g in groups if g == f"{REFERENCE_GROUP} {REFIT_SUFFIX}"]
    by_reference = {ref: tests, **{c: versus(c) for c in controls}}
    rounds = {g: [{"round": i + 1,
                   "table1": _summaries(_collect(records, g, i, "table1", TABLE1_METRICS)),
                   "table2": _summaries(_collect(records, g, i, "table2", TABLE2_METRICS))}
                  for i in range(n_rounds)] for g in groups}
    lookalike = {}
    for g in groups:
        infos = [r["rounds"][0]["groups"][g].get("lookalike") for r in records]
        if any(i is not None for i in infos):
            lookalike[g] = {f: summarize([(i or {}).get(f) for i in infos]) for f in LOOKALIKE_FIELDS}
            lookalike[g]["threshold"] = next(i for i in infos if i is not None).get("threshold")
    diagnoses = [r.get("diagnosis") for r in records if r.get("diagnosis")]
    diagnosis = None
    if diagnoses:
        verdicts = [d["verdict"] for d in diagnoses]
        diagnosis = {f: summarize([d.get(f) for d in diagnoses])
                     for f in ("lift", "confident_share", "lt_auc", "n_bad", "base_rate")}
        diagnosis["verdicts"] = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    auto = {}
    for g in groups:
        per_round = [[r["rounds"][i]["groups"][g].get("auto") for r in records] for i in range(n_rounds)]
        if any(a for rnd in per_round for a in rnd):
            arms = sorted({arm for rnd in per_round for a in rnd if a for arm in a["shares"]})
            auto[g] = [{"round": i + 1,
                        "shares": {arm: summarize([(a or {}).get("shares", {}).get(arm) for a in rnd]) for arm in arms},
                        "values": {arm: summarize([((a or {}).get("values", {}).get(arm) or {}).get("value")
                                                   for a in rnd]) for arm in arms}}
                       for i, rnd in enumerate(per_round)]
    annotators = {}
    for g in groups:
        per_round = [[r["rounds"][i]["groups"][g].get("annotators") for r in records] for i in range(n_rounds)]
        if any(a for rnd in per_round for a in rnd):
            annotators[g] = []
            for i, rnd in enumerate(per_round):
                methods = [(a or {}).get("resolution") for a in rnd]
                annotators[g].append({"round": i + 1,
                                      **{f: summarize([(a or {}).get(f) for a in rnd]) for f in ANNOTATOR_FIELDS},
                                      "resolution": {m: methods.count(m) for m in dict.fromkeys(methods)}})
    final = records[-1]["rounds"][last]["groups"]
    files = {"repeats": [f"repeats/repeat-{r['repeat']:03d}.json" for r in records]}
    for name in FRAME_NAMES + OPTIONAL_FRAMES:
        files[name] = [f"repeats/repeat-{r['repeat']:03d}/{name}.parquet" for r in records
                       if (out / f"repeats/repeat-{r['repeat']:03d}/{name}.parquet").is_file()]
        if name in OPTIONAL_FRAMES and not files[name]:
            del files[name]
    return {
        "format_version": FORMAT_VERSION, "config": config, "repeats_done": [r["repeat"] for r in records],
        "groups": groups, "reference_group": ref, "table1": table1, "table2": table2, "paired_tests": tests,
        "paired_tests_by_reference": by_reference,
        "rounds": rounds, "lookalike": lookalike, "diagnosis": diagnosis, "auto": auto,
        **({"annotators": annotators} if annotators else {}),  # only relabelling groups (ActiveLab) have it
        "confusion_matrix": {g: final[g]["confusion_matrix"] for g in groups},
        "seconds": {"total": round(sum(r.get("seconds", 0) for r in records), 1),
                    "per_repeat": [r.get("seconds") for r in records]},
        "files": files,
    }


def _csv(rows: list[dict]) -> str:
    buf = _io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))  # union, first-seen order
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _flat_row(name: str, summaries: dict, metrics, n: int) -> dict:
    row = {"group": name}
    for m in metrics:
        row[f"{m}_mean"] = summaries[m]["mean"]
        row[f"{m}_std"] = summaries[m]["std"]
    row["n_repeats"] = n
    return row


def write_results(out: Path, results: dict) -> None:
    """results.json and the three CSV files, each written atomically."""
    write_text(json.dumps(to_jsonable(results), indent=1), out / "results.json")
    n = len(results["repeats_done"])
    write_text(_csv([_flat_row(g, s, TABLE1_METRICS, n) for g, s in results["table1"].items()]), out / "table1.csv")
    write_text(_csv([_flat_row(g, s, TABLE2_METRICS, n) for g, s in results["table2"].items()]), out / "table2.csv")
    rows = []
    for g, per_round in results["rounds"].items():
        for entry in per_round:
            for table, metrics in (("table1", TABLE1_METRICS), ("table2", TABLE2_METRICS)):
                rows.append({"round": entry["round"], "table": table,
                             **_flat_row(g, entry[table], metrics, n)})
    write_text(_csv(rows), out / "rounds.csv")


# ------------------------------------------------------------------------------------ printing
TABLE1_COLUMNS = (("MC loss", "multiclass_loss"), ("yield", "yield"), ("conf. yield", "confident_yield"),
                  ("noisy", "noisy_share"))
TABLE2_COLUMNS = tuple((METRIC_NAMES[k], k) for k in (
    "auc", "f1", "r_at_p40", "r_at_p50", "r_at_p60", "r_at_p70", "r_at_p80", "r_at_p90", "tpr_at_fpr1",
    "max_beta_variance", "accuracy", "macro_f1"))
ROUND_COLUMNS = (("MC loss", "table1", "multiclass_loss"), ("yield", "table1", "yield"),
                 ("conf. yield", "table1", "confident_yield"), ("AUC", "table2", "auc"),
                 ("Acc", "table2", "accuracy"), ("macro-F1", "table2", "macro_f1"))
VERSUS_COLUMNS = (("table1", "multiclass_loss", "Δ MC loss"), ("table1", "yield", "Δ yield"),
                  ("table2", "auc", "Δ AUC"), ("table2", "accuracy", "Δ Acc"), ("table2", "macro_f1", "Δ macro-F1"))
SUBPOP_COLUMNS = (("S captured", "table1", "s_captured"), ("S share", "table1", "s_share"),
                  ("conf. yield", "table1", "confident_yield"), ("S acc", "table2", "s_accuracy"),
                  ("S recall", "table2", "s_recall"), ("non-S acc", "table2", "non_s_accuracy"),
                  ("Acc", "table2", "accuracy"), ("AUC macro", "table2", "auc_macro"))
SUBPOP_VERSUS = (("table1", "s_captured", "Δ S captured"), ("table2", "s_accuracy", "Δ S acc"),
                 ("table2", "non_s_accuracy", "Δ non-S acc"))


def _pm(summary: dict) -> str:
    from broaden.console import fmt

    if summary["mean"] is None:
        return "–"
    # A fixed-point std keeps the columns narrow enough for Table 2's thirteen of them.
    return fmt(summary["mean"]) + ("" if summary["std"] is None else f"±{summary['std']:.3f}")


def _versus(test: dict) -> str:
    if test["mean_diff"] is None:
        return "–"
    p = "" if test["wilcoxon_p"] is None else f" p={test['wilcoxon_p']:.2f}"
    return f"{test['mean_diff']:+.3f} ({test['wins']}/{test['n']}{p})"


def print_tables(results: dict, console=None) -> None:
    """Table 1, Table 2, the per-round trend, the LSB summary and the paired comparison, as rich tables."""
    from broaden.console import fmt, make_console, print_table

    console = console or make_console()
    cfg, n = results["config"], len(results["repeats_done"])
    cols1 = [c for c in TABLE1_COLUMNS if c[1] != "noisy_share" or cfg.get("label_noise") or cfg.get("confusion")]
    specs = (
        (f"Table 1 — selected set, round 1 ({cfg.get('discrepancy')} loss, mean ± std over {n} repeat(s))",
         results["table1"], cols1),
        (f"Table 2 — test split after {cfg.get('rounds', 1)} round(s) (mean ± std over {n} repeat(s))",
         results["table2"], TABLE2_COLUMNS),
    )
    for title, rows, columns in specs:
        print_table(title, ["group", *(name for name, _ in columns)],
                    ((group, *(_pm(summaries[key]) for _, key in columns)) for group, summaries in rows.items()),
                    console=console)
    if max(len(r) for r in results["rounds"].values()) > 1:
        print_table("Per round (Algorithm 1): the round's selection (Table 1) and the model retrained after it "
                    "(Table 2), mean ± std", ["group", "round", *(name for name, *_ in ROUND_COLUMNS)],
                    ((group, str(entry["round"]), *(_pm(entry[t][m]) for _, t, m in ROUND_COLUMNS))
                     for group, per_round in results["rounds"].items() for entry in per_round),
                    console=console, labels=2)
    if results["lookalike"]:
        counts = ("n_bad_cases", "n_seeds", "n_candidates", "n_lsb_selected")
        print_table("LSB per group, round 1 (mean over repeats): bad cases d > τ1, seeds, kNN candidates after "
                    "the LT filter, items taken, LT AUC on held-out labelled items",
                    ["group", "bad cases", "seeds", "candidates", "taken", "LT AUC", "τ2"],
                    ((group, *(fmt(info[f]["mean"], 1) for f in counts), fmt(info["auc"]["mean"]),
                      fmt(info["threshold"], 2)) for group, info in results["lookalike"].items()),
                    console=console)
    if results.get("diagnosis"):
        d = results["diagnosis"]
        console.print(f"Error-clustering diagnostic of the seeding partition (round 1, mean over repeats): lift "
                      f"{fmt(d['lift']['mean'])}, confidently wrong {fmt(d['confident_share']['mean'])}, LT AUC "
                      f"{fmt(d['lt_auc']['mean'])}; verdicts {', '.join(f'{k} {v}' for k, v in d['verdicts'].items())}",
                      highlight=False)
    for group, per_round in (results.get("auto") or {}).items():
        arms = list(per_round[0]["shares"])
        print_table(f"{group}: share of the budget per arm and round (mean ± std over repeats), and each arm's "
                    "measured value per item (log-loss gain, equal-size leave-n-out on the validation sample)",
                    ["round", *(f"share {a}" for a in arms), *(f"value {a}" for a in arms)],
                    ((str(e["round"]), *(_pm(e["shares"][a]) for a in arms), *(_pm(e["values"][a]) for a in arms))
                     for e in per_round), console=console)
    if results.get("annotators"):
        print_table(f"Relabelling groups with {cfg.get('annotators', 1)} annotators, per round (mean ± std over "
                    "repeats): picks that were another vote on a labelled item, votes so far, and the share of "
                    "labelled items whose consensus / first vote alone is right (all items; items with 2+ votes)",
                    ["group", "round", "relabels", "votes", "consensus acc", "1st vote acc", "2+ votes: items",
                     "consensus acc", "1st vote acc"],
                    ((group, str(e["round"]), fmt(e["relabels"]["mean"], 1), fmt(e["votes"]["mean"], 1),
                      _pm(e["consensus_accuracy"]), _pm(e["first_vote_accuracy"]), fmt(e["multi_voted"]["mean"], 1),
                      _pm(e["multi_consensus_accuracy"]), _pm(e["multi_first_vote_accuracy"]))
                     for group, per_round in results["annotators"].items() for e in per_round),
                    console=console, labels=2)
    subpop = cfg.get("subpop_size")
    if subpop:
        scenario = cfg.get("scenario") or {}
        print_table(f"Sub-population S ({scenario.get('kind')}: {scenario.get('subpop')}, {subpop} items, "
                    f"{cfg.get('subpop_test')} in test): share of S's pool items selected in round 1 and test "
                    f"metrics after {cfg.get('rounds', 1)} round(s), mean ± std",
                    ["group", *(name for name, *_ in SUBPOP_COLUMNS)],
                    ((group, *(_pm((results["table1"] if t == "table1" else results["table2"])[group][m])
                               for _, t, m in SUBPOP_COLUMNS)) for group in results["groups"]),
                    console=console)
    versus = VERSUS_COLUMNS + (SUBPOP_VERSUS if subpop else ())
    by_reference = results.get("paired_tests_by_reference") or {results["reference_group"]: results["paired_tests"]}
    for reference, per_group in by_reference.items():
        if per_group:
            print_table(f"vs {reference}: mean difference (wins/repeats, Wilcoxon p)",
                        ["group", *(name for *_, name in versus)],
                        ((group, *(_versus(tests[t][m]) for t, m, _ in versus)) for group, tests in per_group.items()),
                        console=console)
