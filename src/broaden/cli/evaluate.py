"""``broaden evaluate``: print paper-Table-2-style metrics (or JSON) for scored tables."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from broaden.cli.common import add_column_flags, columns_from_args, parse_int_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="AUC, F1, R@P40-90, TPR@1%%FPR, multiclass loss, max Beta variance, ECE and Brier of scored tables",
        description="Evaluate the labelled rows of one or more scored tables (DESIGN.md §4), with their "
        "calibration: ECE (top-label, 15 equal-width bins) and the Brier score (halved for two classes, as "
        "scikit-learn). Several files are shown side by side, one row each.",
    )
    p.add_argument("scored", nargs="+", help="scored Parquet file(s) or directories")
    p.add_argument("--json", action="store_true", help="print JSON (a list when several files are given)")
    p.add_argument("--positive", type=parse_int_list, default=None, metavar="C[,C...]",
                   help="classes counted as positive in the binary view (default: every class but 0)")
    p.add_argument("--discrepancy", choices=("ordinal", "nominal"), default="ordinal",
                   help="d(x) for the multiclass loss: ordinal |y-E[x]|/(C-1) (graded labels) or "
                   "nominal 1-p_y (unordered classes)")
    p.add_argument("--logits", action="store_true", help="the probs column holds raw scores: softmax them")
    add_column_flags(p)
    p.set_defaults(func=run)


def short_names(paths: list[str]) -> list[str]:
    """The fewest trailing path components that still tell the files apart (full paths fold badly)."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(x) for x in parts) + 1):
        names = [str(Path(*x[-depth:])) for x in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def run(args: argparse.Namespace) -> int:
    from broaden.evaluation import evaluate
    from broaden.metrics import to_jsonable
    from broaden.console import print_metrics_table

    results = [
        evaluate(path, positive=args.positive, discrepancy=args.discrepancy,
                 columns=columns_from_args(args), logits=args.logits)
        for path in args.scored
    ]
    if args.json:
        payload = results[0] if len(results) == 1 else [dict(r, file=f) for r, f in zip(results, args.scored)]
        print(json.dumps(to_jsonable(payload), indent=2))
    else:
        print_metrics_table(dict(zip(short_names(args.scored), results)))
    return 0
