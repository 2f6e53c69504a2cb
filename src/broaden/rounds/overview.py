"""``broaden status``: the round table and, per strategy, how often its picks were bad cases.

For each open round it also lists the items still *pending* (no vote) and *tied* (votes that share the
top count, shown per class), so a team knows exactly what to chase before ``round finish``.

A *bad case* is a labelled item the model that selected it got wrong (resolved label ≠ argmax of the
probabilities it was selected with). Its yield is reported with the Beta(1 + bad, 1 + good) posterior
mean and central 90 % interval, so a team can see whether one strategy finds errors more often than
another before moving budget to it.

Per finished round it also gives the stopping signals of :mod:`broaden.rounds.stopping` (agreement with
the previous round's model on the stop set, Eq. 12's max Beta variance, the yield trend) and their
plain-language reading: advice, never acted on.
"""
from __future__ import annotations

import json
from collections import defaultdict

from broaden.rounds.resolve import beta_yield
from broaden.rounds.stopping import workspace_signals
from broaden.rounds.workspace import Workspace

EVAL_KEYS = ("auc", "f1", "accuracy", "macro_f1", "multiclass_loss", "max_beta_variance")


SHOW_ITEMS = 20


def open_items(items, resolved, class_names) -> tuple[list[str], list[dict]]:
    """(pending ids, tied items as {"id", "votes": {class name: count}}) among ``items`` of one round."""
    pending, tied = [], []
    for it in items:
        res = resolved.get((it["item_key"], it["round"]))
        if res is None:
            pending.append(it["item_key"])
        elif res.tie:
            tied.append({"id": it["item_key"],
                         "votes": {class_names[k] if k < len(class_names) else str(k): n for k, n in res.votes.items()}})
    return pending, tied


def describe_open(pending: list[str], tied: list[dict], limit: int = 5) -> str:
    """One line naming the first pending and tied items, for messages."""
    def cut(names: list[str], total: int) -> str:
        return ", ".join(names[:limit]) + (f" and {total - limit} more" if total > limit else "")

    parts = []
    if pending:
        parts.append(f"{len(pending)} without a label ({cut([repr(k) for k in pending], len(pending))})")
    if tied:
        shown = [f"{t['id']!r} ({', '.join(f'{c} {n}' for c, n in t['votes'].items())})" for t in tied]
        parts.append(f"{len(tied)} tied ({cut(shown, len(tied))})")
    return " and ".join(parts)


def status(ws: Workspace, *, level: float = 0.9) -> dict:
    with ws.ledger() as ledger:
        rounds, items = ledger.rounds(), ledger.items()
        consensus = ws.resolve(ledger)
        counts = ledger.counts()
        allocations = {r["round"]: ledger.get_meta(f"allocation:{r['round']}") for r in rounds}
        diagnosis = _diagnosis(ws, ledger, consensus)
    resolved = consensus.items
    open_numbers = {r["round"] for r in rounds if r["status"] == "open"}
    by_open: dict[int, list] = defaultdict(list)
    per_round: dict[int, dict] = defaultdict(lambda: {"selected": 0, "relabel": 0, "labelled": 0, "tied": 0,
                                                      "pending": 0})
    tally: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])  # (round, strategy) -> [labelled, bad]
    for it in items:
        if it["round"] in open_numbers:
            by_open[it["round"]].append(it)
        row = per_round[it["round"]]
        row["selected"] += 1
        row["relabel"] += int(it["relabel"])  # labelled before, sent again for another vote
        res = resolved.get((it["item_key"], it["round"]))
        if res is None:
            row["pending"] += 1
        elif res.tie:
            row["tied"] += 1
        else:
            row["labelled"] += 1
            if it["pred"] is not None:
                t = tally[(it["round"], it["strategy"])]
                t[0] += 1
                t[1] += int(res.label != it["pred"])
    table = []
    for r in rounds:
        metrics = json.loads(r["metrics"]) if r["metrics"] else {}
        evaluation = metrics.get("eval") or {}
        table.append({
            "round": r["round"], "status": r["status"], "created_at": r["created_at"],
            "finished_at": r["finished_at"], "pool": r["pool"], "strategy": r["strategy"], "budget": r["budget"],
            "model_id": r["model_id"], "embedding_version": r["embedding_version"],
            **per_round[r["round"]],
            "trained_model": (metrics.get("model") or {}).get("id"),
            "metrics": {k: evaluation.get(k) for k in EVAL_KEYS} if evaluation else None,
            "strategy_values": metrics.get("strategy_values"),
            "allocation": json.loads(allocations[r["round"]]) if allocations.get(r["round"]) else None,
        })
        if r["round"] in open_numbers:
            pending, tied = open_items(by_open[r["round"]], resolved, ws.config.class_names)
            table[-1] |= {"pending_items": pending, "tied_items": tied}
    overall: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    round_total: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    by_round: dict[int, dict[str, dict]] = defaultdict(dict)
    for (rnd, name), (n, bad) in sorted(tally.items()):
        for total in (overall[name], round_total[rnd]):
            total[0] += n
            total[1] += bad
        by_round[rnd][name] = beta_yield(bad, n, level).to_dict()
    stopping = workspace_signals(rounds, {rnd: (n, bad) for rnd, (n, bad) in round_total.items()})
    return {
        "workspace": str(ws.path), "level": level, "rounds": table,
        "strategies": {name: beta_yield(bad, n, level).to_dict() for name, (n, bad) in sorted(overall.items())},
        "strategies_by_round": {str(k): v for k, v in sorted(by_round.items())},
        "votes": counts["annotations"], "imports": counts["imports"], "diagnosis": diagnosis,
        "label_resolution": consensus.method, "resolution_note": consensus.note,
        "annotators": _named(consensus.annotators, ws.config.class_names),
        "stopping": [s.to_dict() for s in stopping],
    }


def _named(annotators: list[dict] | None, class_names: list[str]) -> list[dict] | None:
    """CROWDLAB's per-annotator table with the worst class as its name, as tied items show their votes."""
    if annotators is None:
        return None
    return [a | {"worst_class": class_names[a["worst_class"]] if a["worst_class"] < len(class_names)
                 else str(a["worst_class"])} for a in annotators]


def _diagnosis(ws: Workspace, ledger, consensus) -> dict | None:
    """The error-clustering diagnostic of the latest finished round's labels (None before one finished)."""
    from broaden.auto import diagnose
    from broaden.errors import BroadenError

    finished = [r["round"] for r in ledger.rounds() if r["status"] == "finished"]
    if not finished:
        return None
    cfg = ws.config
    try:
        labeled = ws.labeled_table(ledger, scored=True, consensus=consensus)
        recent = [it["item_key"] for it in ledger.items(finished[-1])]
        return diagnose(labeled, recent=recent, seed_threshold=cfg.seed_threshold, discrepancy=cfg.discrepancy,
                        columns=cfg.cols, seed=cfg.seed).to_dict()
    except (BroadenError, ValueError):
        return None  # e.g. too few labels or no embeddings: status still reports everything else


def print_status(report: dict) -> None:
    from broaden.console import fmt, make_console, print_table

    console = make_console()
    rows = []
    for r in report["rounds"]:
        m = r["metrics"] or {}
        rows.append((str(r["round"]), r["status"], r["strategy"], r["model_id"], r["embedding_version"],
                     str(r["selected"]), str(r["labelled"]), str(r["tied"]), str(r["pending"]),
                     fmt(m.get("auc")), fmt(m.get("macro_f1")), fmt(m.get("multiclass_loss"))))
    print_table(f"rounds of {report['workspace']}",
                ["round", "status", "strategy", "model", "emb. version", "selected", "labelled", "tied", "pending",
                 "AUC", "macro-F1", "MC loss"], rows, console=console, labels=5)
    for r in report["rounds"]:
        if r.get("relabel"):
            console.print(f"round {r['round']}: {r['relabel']} of its items were labelled before and sent again "
                          "for another vote (relabel)", highlight=False)
    pct = round(report["level"] * 100)
    for r in report["rounds"]:
        pending, tied = r.get("pending_items") or [], r.get("tied_items") or []
        if pending or tied:
            rows = [(str(t["id"]), "tied", ", ".join(f"{c}: {n}" for c, n in t["votes"].items()))
                    for t in tied[:SHOW_ITEMS]]
            rows += [(str(k), "pending", "") for k in pending[:max(0, SHOW_ITEMS - len(rows))]]
            more = len(tied) + len(pending) - len(rows)
            print_table(f"round {r['round']}: tied and pending items"
                        + (f" (first {len(rows)} of {len(rows) + more}; all in --json)" if more > 0 else ""),
                        ["id", "state", "votes"], rows, console=console, labels=3)
    values = [(str(r["round"]), arm, fmt(v["value"]), fmt(v["f1_value"]), str(v["n"]),
               fmt(((r.get("allocation") or {}).get("shares") or {}).get(arm)))
              for r in report["rounds"] for arm, v in (r.get("strategy_values") or {}).items()]
    if values:
        print_table("measured value per strategy (log-loss and macro-F1 lost per item without its items; "
                    "--strategy auto follows these)", ["round", "strategy", "value", "F1 value", "items", "auto share"],
                    values, console=console, labels=2)
    for r in report["rounds"]:
        if r.get("allocation"):
            shares = ", ".join(f"{a} {v:.2f}" for a, v in r["allocation"]["shares"].items())
            console.print(f"round {r['round']} (auto): {shares}; " + "; ".join(r["allocation"]["reasons"]),
                          highlight=False)
    if report.get("diagnosis"):
        console.print(f"latest labels: {report['diagnosis']['reading']}", highlight=False)
    if report.get("annotators"):
        print_table("annotators by CROWDLAB quality (label_resolution crowdlab; lowest first)",
                    ["annotator", "quality", "agrees with consensus", "worst class", "items"],
                    ((a["annotator"], fmt(a["quality"]), fmt(a["agreement_with_consensus"]), a["worst_class"],
                      str(a["items"])) for a in report["annotators"]), console=console)
    if report.get("resolution_note"):
        console.print(f"labels: {report['resolution_note']}", highlight=False)
    print_table("bad-case yield per strategy (labelled items the selecting model got wrong)",
                ["strategy", "labelled", "bad", "yield (posterior mean)", f"{pct}% interval"],
                ((name, str(s["labelled"]), str(s["bad"]), fmt(s["mean"]), f"{fmt(s['low'])} – {fmt(s['high'])}")
                 for name, s in report["strategies"].items()), console=console)
    stopping = report.get("stopping") or []
    if stopping:
        print_table("when to stop: advice, never automatic (stop-set agreement κ, Eq. 12 max Beta variance, yield)",
                    ["round", "κ vs previous", "stable", "max Var", "certain", "yield", "yield falling"],
                    ((str(s["round"]), fmt(s["kappa"]), "yes" if s["stable"] else "no",
                      fmt(s["max_beta_variance"], 4), "yes" if s["certain"] else "no", fmt(s["yield_share"]),
                      "yes" if s["yield_falling"] else "no") for s in stopping), console=console)
        console.print(f"when to stop: {stopping[-1]['reading']}", highlight=False)
