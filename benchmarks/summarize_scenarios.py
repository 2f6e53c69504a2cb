"""Markdown summary of scenario runs (benchmarks/run_scenarios.sh) for BENCHMARKS.md.

Usage: python benchmarks/summarize_scenarios.py runs/scenarios [--metrics s_captured,s_accuracy,accuracy]
                                               [--also runs/other ...] [--skip-also GROUP ...]
Per run: each group's mean ± std, and its paired difference to the fair control Stat-AL (refit)
(mean, wins/repeats, Wilcoxon p); then the error-clustering diagnostic of the seeding partition.
``--also ROOT`` adds the groups of the same-named runs under ROOT (runs are deterministic: a group present
in both must have identical per-repeat figures, which is checked, so a new group can be run alone next to
the reference group and compared with groups run earlier). ``--skip-also GROUP`` leaves that group of the
``--also`` roots out: a new version of a group (e.g. ``Auto (refit)`` after its rule changed) is compared
with the fixed groups run earlier without the identity check failing on the old version.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from broaden.simulate.stats import paired_test

TABLE_OF = {"s_captured": "table1", "s_share": "table1", "confident_yield": "table1", "multiclass_loss": "table1",
            "yield": "table1"}
CONTROL = "Stat-AL (refit)"


def cell(summary: dict) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}" if summary.get("std") is not None else f"{summary['mean']:.3f}"


def versus(test: dict | None) -> str:
    if not test or test.get("mean_diff") is None:
        return "–"
    p = "" if test.get("wilcoxon_p") is None else f", p {test['wilcoxon_p']:.3f}"
    return f"{test['mean_diff']:+.3f} ({test['wins']}/{test['n']}{p})"


def load(run: Path, also: list[Path], skip: frozenset[str] = frozenset()) -> dict:
    """results.json of ``run``, with the groups of the same-named runs under ``also`` merged in (but ``skip``)."""
    res = json.loads((run / "results.json").read_text())
    for root in also:
        path = root / run.name / "results.json"
        if not path.is_file():
            continue
        other = json.loads(path.read_text())
        if other["repeats_done"] != res["repeats_done"]:
            raise SystemExit(f"{path}: repeats {other['repeats_done']} differ from {run}'s {res['repeats_done']}")
        for g in other["groups"]:
            if g in skip:
                continue
            if g in res["groups"]:
                for table in ("table1", "table2"):
                    for m, v in other[table][g].items():
                        if v.get("values") != res[table][g].get(m, {}).get("values"):
                            raise SystemExit(f"{g} {m} differs between {run} and {path}: not the same runs")
                continue
            res["groups"].append(g)
            for table in ("table1", "table2"):
                res[table][g] = other[table][g]
            if g in (other.get("auto") or {}):
                res.setdefault("auto", {})[g] = other["auto"][g]
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--metrics", default="s_captured,s_accuracy,non_s_accuracy,accuracy,macro_f1")
    ap.add_argument("--also", action="append", default=[], type=Path, metavar="ROOT")
    ap.add_argument("--skip-also", action="append", default=[], metavar="GROUP",
                    help="leave this group of the --also roots out (repeatable)")
    args = ap.parse_args()
    skip = frozenset(args.skip_also)
    metrics = [m.strip() for m in args.metrics.split(",")]
    runs = []
    for run in sorted(p for p in Path(args.root).iterdir() if (p / "results.json").is_file()):
        res = load(run, args.also, skip)
        runs.append(res | {"name": run.name})
        cfg = res["config"]
        sc = cfg.get("scenario") or {}
        print(f"\n#### {run.name} — {sc.get('kind')}"
              + (f", S = `{sc.get('subpop')}` ({cfg.get('subpop_size')} items)" if cfg.get("subpop_size") else "")
              + f", {len(res['repeats_done'])} repeats, {cfg.get('rounds')} round(s)\n")
        present = [m for m in metrics if any(
            (res[TABLE_OF.get(m, "table2")].get(g) or {}).get(m, {}).get("mean") is not None for g in res["groups"])]
        print("| group | " + " | ".join(present) + " | " + " | ".join(f"Δ {m} vs refit" for m in present) + " |")
        print("|---" * (1 + 2 * len(present)) + "|")
        for g in res["groups"]:
            vals = [cell(res[TABLE_OF.get(m, "table2")][g].get(m)) for m in present]
            diffs = [versus(None if g == CONTROL or CONTROL not in res["groups"] else paired_test(
                res[TABLE_OF.get(m, "table2")][g][m]["values"], res[TABLE_OF.get(m, "table2")][CONTROL][m]["values"]))
                for m in present]
            print(f"| {g} | " + " | ".join(vals) + " | " + " | ".join(diffs) + " |")
        d = res.get("diagnosis")
        if d:
            print(f"\nDiagnostic of the seeding partition: lift {cell(d['lift'])}, confidently wrong "
                  f"{cell(d['confident_share'])}, LT AUC {cell(d['lt_auc'])}; verdicts {d['verdicts']}.")
        for group, entries in (res.get("auto") or {}).items():
            arms = list(entries[0]["shares"])
            print(f"\n{group} shares per round: " + "; ".join(
                f"r{e['round']} " + ", ".join(f"{a} {cell(e['shares'][a])}" for a in arms) for e in entries))
            print(f"\n{group} vs each fixed group (paired over repeats: mean Δ, wins/repeats, Wilcoxon p):\n")
            shown = [m for m in ("accuracy", "macro_f1", "s_accuracy") if m in present]
            print("| vs | " + " | ".join(f"Δ {m}" for m in shown) + " |")
            print("|---" * (1 + len(shown)) + "|")
            for other in res["groups"]:
                if not other.startswith("Auto"):
                    print(f"| {other} | " + " | ".join(versus(paired_test(
                        res["table2"][group][m]["values"], res["table2"][other][m]["values"])) for m in shown) + " |")
    auto_verdict(runs)
    predictors(Path(args.root), args.also, skip)


def auto_verdict(runs: list[dict]) -> None:
    """Each Auto group against the best fixed group and the paper's 80/20 mix, on accuracy after the last round
    (``runs``: each run's merged results.json with its ``name``)."""
    autos = sorted({g for r in runs for g in r["groups"] if g.startswith("Auto")})
    for auto in autos:
        print(f"\n#### {auto} against the best fixed group and the fixed 80/20 mix (accuracy after the last round; "
              "'differ': some pair of fixed groups differs at p < 0.05)\n")
        print(f"| run | best fixed group | {auto} − best fixed | {auto} − Stat-AL+LSB-LT (80/20) | fixed groups differ |")
        print("|---|---|---|---|---|")
        for r in (r for r in runs if auto in r["groups"]):
            acc = {g: r["table2"][g]["accuracy"]["values"] for g in r["groups"]}
            fixed = [g for g in r["groups"] if not g.startswith("Auto")]
            best = max(fixed, key=lambda g: r["table2"][g]["accuracy"]["mean"])
            differ = any((paired_test(acc[x], acc[y])["wilcoxon_p"] or 1) < 0.05
                         for i, x in enumerate(fixed) for y in fixed[i + 1:])
            mix = versus(paired_test(acc[auto], acc["Stat-AL+LSB-LT"])) if "Stat-AL+LSB-LT" in acc else "–"
            print(f"| {r['name']} | {best} {r['table2'][best]['accuracy']['mean']:.3f} | "
                  f"{versus(paired_test(acc[auto], acc[best]))} | {mix} | {'yes' if differ else 'no'} |")


def _repeats(run: Path, also: list[Path], skip: frozenset[str]) -> dict[int, dict]:
    """Per repeat: the round groups of ``run`` and of the same-named runs under ``also`` (but ``skip``), merged."""
    out = {}
    for f in sorted((run / "repeats").glob("repeat-*.json")):
        rec = json.loads(f.read_text())
        for root in also:
            g = root / run.name / "repeats" / f.name
            if g.is_file():
                other = json.loads(g.read_text())
                for mine, theirs in zip(rec["rounds"], other["rounds"]):
                    kept = {g: v for g, v in theirs["groups"].items() if g not in skip}
                    mine["groups"] = {**kept, **mine["groups"]}
        out[rec["repeat"]] = rec
    return out


def predictors(root: Path, also: list[Path], skip: frozenset[str], lsb: str = "Stat-AL+LSB-LT@0.5",
               control: str = CONTROL) -> None:
    """How well the round-1 signals predicted whether broadening paid: per repeat, the diagnostic's lift and
    each Auto group's measured value difference (LSB-LT − Stat-AL, round 1) against the round-1 accuracy
    difference of ``lsb`` and ``control`` (Spearman ρ over all repeats; sign agreement)."""
    from scipy.stats import spearmanr

    rows = []
    for run in sorted(p for p in root.iterdir() if (p / "repeats").is_dir()):
        for rec in _repeats(run, also, skip).values():
            g = rec["rounds"][0]["groups"]
            if lsb not in g or control not in g:
                continue
            gain = g[lsb]["table2"]["accuracy"] - g[control]["table2"]["accuracy"]
            row = {"run": run.name, "gain": gain, "lift": (rec.get("diagnosis") or {}).get("lift"),
                   "verdict": (rec.get("diagnosis") or {}).get("verdict")}
            for name, grp in g.items():
                vals = (grp.get("auto") or {}).get("values") or {}
                if "lsb-lt" in vals and "stat" in vals:
                    row[name] = vals["lsb-lt"]["value"] - vals["stat"]["value"]
            rows.append(row)
    if not rows:
        return
    print(f"\n#### What predicted the winner (round 1: {lsb} − {control} accuracy, {len(rows)} repeats)\n")
    print("| signal | Spearman ρ with the gain | p | sign agrees |")
    print("|---|---|---|---|")
    signals = ["lift"] + sorted({k for r in rows for k in r if k.startswith("Auto")})
    for sig in signals:
        pairs = [(r[sig], r["gain"]) for r in rows if r.get(sig) is not None]
        if len(pairs) < 3:
            continue
        x, y = zip(*pairs)
        rho, p = spearmanr(x, y)
        centre = 1.0 if sig == "lift" else 0.0  # lift > 1 / value difference > 0 predicts "LSB pays"
        agree = sum((a > centre) == (b > 0) for a, b in pairs if b != 0) / max(1, sum(b != 0 for _, b in pairs))
        label = "diagnostic lift" if sig == "lift" else f"{sig}: measured value LSB-LT − Stat-AL"
        print(f"| {label} | {rho:+.2f} | {p:.2g} | {agree:.0%} |")
    by = {}
    for r in rows:
        if r["verdict"]:
            by.setdefault(r["verdict"], []).append(r["gain"])
    print("\nRound-1 gain by the diagnostic's verdict: " + "; ".join(
        f"{v} {sum(x) / len(x):+.4f} (LSB ahead in {sum(x_ > 0 for x_ in x)}/{len(x)})" for v, x in sorted(by.items())))


if __name__ == "__main__":
    main()
