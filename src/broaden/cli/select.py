"""``broaden select``: choose the next items to label (parses arguments, calls broaden.select.select)."""
from __future__ import annotations

import argparse

from broaden.cli.common import add_column_flags, add_engine_flags, columns_from_args, engine_from_args


# Strategy options: flag → (option name, type, help). Unset flags are not passed, so defaults live in the API.
OPTIONS = {
    "--committee-cols": ("committee_cols", str, "qbc, bald: comma-separated committee probability columns "
                         "(default: the pool's probs_m0, probs_m1, ... from `broaden score --mc-dropout N`)"),
    "--qbc-measure": ("qbc_measure", str, "qbc: vote_entropy (default) or kl (mean KL to consensus)"),
    "--annotations": ("annotations", str, "activelab: the votes so far, a CSV or Parquet file with id, annotator, "
                      "label; the pool rows it names may be sent again to relabel"),
    "--proportions": ("proportions", str, "hw: class weights '0.4,0.3,0.2,0.1' or '0:0.5,3:0.5' "
                      "(default: the pool's predicted-class distribution with --floor)"),
    "--floor": ("floor", float, "hw: minimum share of each present class in the default proportions (0.05)"),
    "--easy-share": ("easy_share", float, "hw: share of easier items (0.2)"),
    "--easy-source": ("easy_source", str, "hw: 'band' (default) or a weaker model's probability column"),
    "--easy-band": ("easy_band", str, "hw: normalised-entropy band 'lo,hi' for easy items (0.2,0.6)"),
    "--skip-top": ("skip_top", float, "hw: skip this fraction of each class's most ambiguous items (0)"),
    "--uncertainty": ("uncertainty", str, "hw, coreset, badge: the uncertainty score that ranks (hw) or "
                      "pre-filters the candidates: entropy (default), margin or least_confident"),
    "--candidate-factor": ("candidate_factor", float, "coreset, badge, cluster_margin, typiclust, diverse(...): "
                           "keep this many times the share as candidates before the diversity step (10)"),
    "--n-clusters": ("n_clusters", int, "cluster_margin, typiclust: k-means clusters of the candidates "
                     "(default min(share, 1000); typiclust adds the labelled items)"),
    "--dirty-bound": ("dirty_bound", float, "hw + --labeled: relabel the worst suspected mislabels until "
                      "at most this share of the labelled set is suspect"),
    "--auto-arms": ("auto_arms", str, "auto: the arms that compete, comma-separated from stat, lsb-lt, qbc, hw, "
                    "diverse (default: stat, lsb-lt with --labeled, qbc with --committee-cols)"),
    "--auto-floor": ("auto_floor", float, "auto: each arm's least share of the budget, so every arm's value keeps "
                     "being measured (0.02)"),
    "--max-seeds": ("max_seeds", int, "lsb: at most this many seed bad cases (1000; --seeds is the old name)"),
    "--seed-threshold": ("seed_threshold", float, "lsb: T1, seeds have discrepancy d > T1 (0.5)"),
    "--discrepancy": ("discrepancy", str, "lsb: ordinal |y-E[x]|/(C-1) (default) or nominal 1-p_y"),
    "--per-class-cap": ("per_class_cap", int, "lsb: at most this many seeds per label"),
    "--k": ("k", int, "lsb: neighbours per seed (default max(10, 2*share/seeds found))"),
    "--lookalike-threshold": ("lookalike_threshold", float, "lsb-lt: T2, keep P(bad case|embedding) > T2 (0.5)"),
    "--rank-by": ("rank_by", str, "lsb: similarity (lsb's default), lookalike (lsb-lt's default) or nearest "
                  "(every seed's 1st neighbour, then every 2nd, ...)"),
    "--index": ("index", str, "lsb: kNN index auto|flat|ivf|hnsw|ivfpq (auto)"),
    "--metric": ("metric", str, "lsb, coreset, cluster_margin, typiclust, diverse(...): cosine (default) or l2"),
    "--target-recall": ("target_recall", float, "lsb: recall@k an approximate index is calibrated to (0.95)"),
    "--memory-gb": ("memory_gb", float, "lsb: memory budget for the index (8)"),
    "--index-dir": ("index_dir", str, "lsb: where saved indexes live (default beside the pool)"),
}

# Old flag names kept for one release (docs/architecture.md, glossary).
OLD_FLAGS = {"--max-seeds": ("--seeds",)}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select", help="choose the next items to label from a scored pool",
        description="Choose BUDGET pool items with one strategy or a mix such as "
        "'entropy:0.6,margin:0.2,random:0.2'. Strategies: random, least_confident, margin, entropy, qbc, bald, "
        "activelab, hw, lsb, lsb-lt (the last two need --labeled), the diverse batches coreset, badge, "
        "cluster_margin, typiclust and 'diverse(STRATEGY)' (any strategy's top candidates re-ranked for coverage; "
        "quote it in a shell; docs/diversity.md); 'auto' lets the error-clustering diagnostic of "
        "--labeled choose the shares of Stat-AL and LSB-LT (docs/auto.md). Pool rows that already carry a label "
        "(non-null, non-negative label column) are skipped, like --exclude ids, except that activelab may send the "
        "rows named in --annotations again (relabel).",
    )
    p.add_argument("pool", help="scored pool: a Parquet file or a directory of Parquet files")
    p.add_argument("--strategy", required=True, help="strategy name or mix 'name:share,...' (shares sum to 1)")
    p.add_argument("--budget", type=int, required=True, help="number of items to select")
    p.add_argument("--out", required=True, help="output Parquet file (written atomically)")
    p.add_argument("--exclude", help="ids to skip: text file (one per line) or Parquet/CSV with an id column")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--labeled", help="labelled scored table (needed by lsb, lsb-lt; used by hw, coreset, typiclust)")
    p.add_argument("--batch-size", type=int, default=65_536, help="rows per streamed record batch")
    add_column_flags(p)
    add_engine_flags(p)
    g = p.add_argument_group("strategy options (qbc, bald, activelab, hw, lsb/lsb-lt, diverse batches); unset ones "
                             "keep the API defaults")
    for flag, (name, typ, text) in OPTIONS.items():
        g.add_argument(flag, *OLD_FLAGS.get(flag, ()), dest=name, type=typ, help=text)
    g.add_argument("--denoise-seeds", dest="denoise", action="store_const", const=True,
                   help="lsb: drop seeds that confident learning flags as likely mislabelled")
    g.add_argument("--fill", action="store_const", const=True,
                   help="lsb: double k until the share is filled with candidates passing T2, instead of "
                   "passing the shortfall to the next strategy of the mix")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from broaden.select import select

    names = [name for name, _, _ in OPTIONS.values()] + ["denoise", "fill"]
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    with engine_from_args(args) as engine:
        table, reports = select(args.pool, args.strategy, args.budget, exclude=args.exclude, seed=args.seed,
                                labeled=args.labeled, columns=columns_from_args(args), out=args.out,
                                batch_size=args.batch_size, engine=engine, return_details=True, **options)
    counts = {}
    for name in table.column("strategy").to_pylist():
        counts[name] = counts.get(name, 0) + 1
    print(f"wrote {table.num_rows} rows to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    for name, report in reports.items():
        if isinstance(report, Exception):  # a strategy that found nothing passed its share on; say why
            print(f"  {name}: no candidates ({report}); its share went to the other strategies")
    if "auto" in reports:
        alloc = reports["auto"]["allocation"]
        print("  auto: " + ", ".join(f"{a} {v:.2f}" for a, v in alloc.shares.items()))
        for reason in alloc.reasons:
            print(f"    {reason}")
    return 0
