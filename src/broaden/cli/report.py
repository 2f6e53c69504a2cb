"""``broaden report``: write the self-contained HTML report of a simulation result folder or a workspace."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: Tables 1-2, PR/ROC curves, trends, LT scores, bad-case explorer",
        description="Render a `broaden simulate` result folder or a rounds workspace as one HTML file that "
        "needs no network to view. Sections the folder cannot fill say so instead of failing.",
    )
    p.add_argument("dir", help="simulation result folder (results.json) or workspace (ledger.sqlite)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the page (default: DIR/report.html); prints the path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from broaden.report import report

    print(report(args.dir, out=args.out))
    return 0
