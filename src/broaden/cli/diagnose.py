"""``broaden diagnose``: do the model's errors cluster? (calls broaden.auto.diagnose)."""
from __future__ import annotations

import argparse
import json

from broaden.cli.common import add_column_flags, columns_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diagnose", help="measure whether the model's errors cluster (is broadening likely to pay?)",
        description="For each bad case (d > T1) of the latest labelled partition: the share of its k nearest "
        "labelled neighbours (cosine on the embedding) that are bad cases too, against the base rate (the lift; "
        "about 1 when errors are isolated), how confident the model was on them, and the Lookalike model's "
        "held-out AUC; then a plain reading. Probabilities must be out-of-sample (scored before training on "
        "these labels).",
    )
    p.add_argument("labeled", help="labelled scored table (Parquet file or directory) with embeddings")
    p.add_argument("--recent", help="ids of the latest labelled partition (text, CSV or Parquet with an id "
                   "column; default: every labelled item)")
    p.add_argument("--k", type=int, default=10, help="neighbours per bad case (%(default)s)")
    p.add_argument("--seed-threshold", type=float, default=0.5, help="T1: bad cases have d > T1 (%(default)s)")
    p.add_argument("--discrepancy", choices=("ordinal", "nominal"), default="ordinal",
                   help="d = |y - E[x]|/(C-1) (ordinal, default) or 1 - p_y (nominal, unordered classes)")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    add_column_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from broaden.auto import diagnose
    from broaden.io.ids import read_ids

    recent = read_ids(args.recent) if args.recent else None
    d = diagnose(args.labeled, recent=recent, k=args.k, seed_threshold=args.seed_threshold,
                 discrepancy=args.discrepancy, columns=columns_from_args(args))
    if args.json:
        print(json.dumps(d.to_dict(), indent=2))
        return 0
    from broaden.console import fmt, make_console, print_table

    rows = [("labelled items", str(d.n_labeled)), ("recent partition", str(d.n_recent)),
            ("bad cases in it", str(d.n_bad)), ("base rate of bad cases", fmt(d.base_rate)),
            (f"bad cases among their {d.k} nearest neighbours", fmt(d.neighbour_bad_rate)), ("lift", fmt(d.lift)),
            ("mean confidence on bad cases", fmt(d.mean_confidence)),
            ("share confidently wrong (max p > 0.7)", fmt(d.confident_share)), ("Lookalike AUC", fmt(d.lt_auc))]
    console = make_console()
    print_table(f"Error clustering of {args.labeled}", ["measure", "value"], rows, console=console)
    console.print(d.reading, highlight=False)
    return 0
