"""``broaden demo``: a few-minute simulation on the clickbait headlines that prints both tables."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a short simulation on the clickbait headlines (one round, one repeat, a few minutes on a CPU)",
        description="Runs `broaden simulate` on a stratified 8,000-headline subsample of the clickbait data "
        "(500 initial labels, budget 500, one round, one repeat) with the bundled all-MiniLM-L6-v2 encoder, "
        "prints Table 1 and Table 2, and says where the results and the report are.",
    )
    p.add_argument("--out", default="demo-output", help="result folder (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="datasets folder (default $BROADEN_DATA_DIR)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default <broaden cache>/embeddings)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from broaden.simulate import demo

    demo(args.out, data_dir=args.data_dir, cache_dir=args.cache_dir, show_progress=not args.quiet,
         report=not args.no_report)
    return 0
