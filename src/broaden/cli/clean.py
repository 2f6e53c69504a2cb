"""``broaden clean``: rank likely mislabelled rows of a labelled table (calls broaden.select.cleaning)."""
from __future__ import annotations

import argparse

from broaden.cli.common import add_column_flags, columns_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from broaden.select.cleaning import METHODS, QUALITY_SCORES

    p = subparsers.add_parser(
        "clean", help="rank likely mislabelled items of a labelled table (confident learning)",
        description="Flag labelled rows whose label disagrees with out-of-sample probabilities (cleanlab) "
        "and write them worst first. Refuses an evaluation split: a 'split' column valued "
        "test/eval/evaluation/val/valid/validation/dev/holdout in any row, 'broaden.split' Parquet metadata naming "
        "one, or — when the table has neither — such a token in the file or folder name.",
    )
    p.add_argument("labeled", help="labelled scored table (Parquet file or directory); probs must be out-of-sample")
    p.add_argument("--out", required=True, help="output Parquet file of flagged rows (written atomically)")
    p.add_argument("--dirty-bound", "--max-share", dest="dirty_bound", type=float,
                   help="flag only the worst suspects needed so that at most this share of the labelled rows stays "
                   "suspect (default: flag all; --max-share is the old name)")
    p.add_argument("--method", default="prune_by_noise_rate", choices=METHODS, help="cleanlab filter_by")
    p.add_argument("--score", default="self_confidence", choices=QUALITY_SCORES, help="label quality score for ranking")
    p.add_argument("--logits", action="store_true", help="the probability column holds raw scores (softmaxed)")
    add_column_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from broaden.select.cleaning import clean

    table = clean(args.labeled, out=args.out, columns=columns_from_args(args), dirty_bound=args.dirty_bound,
                  method=args.method, score=args.score, logits=args.logits)
    print(f"wrote {table.num_rows} suspected mislabels to {args.out}")
    return 0
