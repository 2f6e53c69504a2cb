"""``broaden lsb``: Latent Space Broadening (parses arguments, calls broaden.lsb.lsb)."""
from __future__ import annotations

import argparse

from broaden.cli.common import add_column_flags, add_engine_flags, columns_from_args, engine_from_args

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        return key, value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lsb", help="Latent Space Broadening: neighbours of the labelled set's bad cases in the pool",
        description="Seed bad cases (d > T1) from the labelled set, find each seed's K nearest pool items "
        "(exact or a calibrated FAISS index), drop labelled/excluded ids, deduplicate, optionally keep only "
        "items the Lookalike Threshold scores above T2. OUT has id, seed_id, neighbor_rank, similarity, "
        "lookalike_score, seed_ids and the pool's columns.",
    )
    p.add_argument("--labeled", required=True, help="labelled scored table (Parquet file or directory)")
    p.add_argument("--pool", required=True, help="scored pool (Parquet file or directory)")
    p.add_argument("--out", required=True, help="candidates Parquet file (written atomically)")
    g = p.add_argument_group("seeds")
    g.add_argument("--max-seeds", "--seeds", dest="max_seeds", type=int, default=1000,
                   help="at most this many seeds (default %(default)s; --seeds is the old name)")
    g.add_argument("--seed-threshold", type=float, default=0.5, help="T1: seeds have d > T1 (default %(default)s)")
    g.add_argument("--discrepancy", choices=("ordinal", "nominal"), default="ordinal",
                   help="d(x): ordinal |y-E[x]|/(C-1) for graded labels, nominal 1-p_y for unordered classes")
    g.add_argument("--per-class-cap", type=int, help="at most this many seeds per label")
    g.add_argument("--denoise-seeds", action="store_true",
                   help="drop seeds that confident learning flags as likely mislabelled")
    g.add_argument("--logits", action="store_true", help="probability columns hold raw scores: softmax them")
    g = p.add_argument_group("neighbours")
    g.add_argument("--k", type=int, default=10, help="neighbours per seed (default %(default)s)")
    g.add_argument("--index", choices=INDEX_KINDS, default="auto", help="kNN structure (default %(default)s)")
    g.add_argument("--metric", choices=("cosine", "l2"), default="cosine", help="default %(default)s")
    g.add_argument("--target-recall", type=float, default=0.95,
                   help="recall@K an approximate index is calibrated to (default %(default)s)")
    g.add_argument("--memory-gb", type=float, default=8.0, help="memory budget for the index (default %(default)s)")
    g.add_argument("--index-dir", help="where saved indexes live (default: POOL.lsb-index beside the pool)")
    g.add_argument("--no-save-index", action="store_true", help="do not save or reuse an index")
    g.add_argument("--index-param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="index parameter, e.g. nlist=4096, codec=SQ8, M=32 (repeatable)")
    g.add_argument("--exclude", help="ids to skip: text file (one per line) or Parquet/CSV with an id column")
    g = p.add_argument_group("lookalike threshold")
    g.add_argument("--lookalike-threshold", type=float,
                   help="T2: keep candidates with P(z=1|h) > T2 (off if unset, as the lsb strategy of broaden select; "
                   "its lsb-lt strategy and broaden simulate use 0.5)")
    g.add_argument("--lookalike-model", help="use this saved Lookalike model (JSON) instead of fitting one")
    g.add_argument("--lookalike-out", help="save the fitted Lookalike model here (JSON)")
    g = p.add_argument_group("outputs")
    g.add_argument("--case-study", type=int, default=0, metavar="N",
                   help="write N seeds next to their neighbours (paper Table 3) as JSON lines")
    g.add_argument("--case-study-out", help="case-study file (default: OUT with .case_study.jsonl)")
    g.add_argument("--seeds-out", help="also write the seed table (Parquet)")
    g.add_argument("--json", action="store_true", help="print the run summary as JSON")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_column_flags(p)
    add_engine_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from broaden.io import check_writable, write_table, write_text
    from broaden.lsb import lsb
    from broaden.metrics import to_jsonable

    if args.lookalike_out and args.lookalike_threshold is None and args.lookalike_model is None:
        from broaden.errors import BroadenError

        raise BroadenError("--lookalike-out saves the fitted Lookalike model, but none is fitted without "
                           "--lookalike-threshold T2 (or loaded with --lookalike-model)")
    case_study_out = args.case_study_out or str(Path(args.out).with_suffix(".case_study.jsonl"))
    # Every output is checked before the work (and the saved index) so that a bad path writes nothing.
    for flag, path in (("--out", args.out), ("--seeds-out", args.seeds_out),
                       ("--lookalike-out", args.lookalike_out),
                       ("--case-study-out", case_study_out if args.case_study else None)):
        if path:
            check_writable(path, f"{flag} file")
    with engine_from_args(args) as engine:
        result = lsb(
            args.labeled, args.pool, max_seeds=args.max_seeds, seed_threshold=args.seed_threshold, k=args.k,
            lookalike_threshold=args.lookalike_threshold, index=args.index, exclude=args.exclude,
            metric=args.metric, discrepancy=args.discrepancy, per_class_cap=args.per_class_cap,
            denoise=args.denoise_seeds, columns=columns_from_args(args), target_recall=args.target_recall,
            memory_gb=args.memory_gb, index_dir=args.index_dir, save_index=not args.no_save_index,
            index_params=dict(args.index_param) or None, lookalike=args.lookalike_model,
            case_study=args.case_study, logits=args.logits, seed=args.seed, engine=engine,
        )
    write_table(result.candidates, args.out)
    summary = {"out": args.out, **result.stats, "index": result.index_info}
    if args.seeds_out:
        write_table(result.seeds, args.seeds_out)
        summary["seeds_out"] = args.seeds_out
    if args.lookalike_out and result.lookalike is not None:
        result.lookalike.save(args.lookalike_out)
        summary["lookalike_out"] = args.lookalike_out
    if args.case_study:
        write_text("".join(json.dumps(to_jsonable(s)) + "\n" for s in result.case_study), case_study_out)
        summary["case_study_out"] = case_study_out
    if args.json:
        print(json.dumps(to_jsonable(summary), indent=2))
        return 0
    info = result.index_info
    recall = info.get("calibration", {}).get("recall") if info.get("calibration") else None
    print(f"seeds: {result.stats['seeds']} of {result.stats['bad_cases']} bad cases "
          f"({result.stats['labeled']} labelled)")
    print(f"index: {info['index']} ({info['reason']})" + (f", {info['calibration']['parameter']}="
          f"{info['breadth']} recall@{args.k}≈{recall}" if recall is not None else "")
          + (", reused from disk" if info.get("reused") else ""))
    for key in ("index_warning", "warning"):
        if info.get(key):
            print(f"warning: {info[key]}")
    if result.lookalike is not None:
        print(f"lookalike threshold: held-out AUC {result.stats['lookalike_auc']}")
    print(f"wrote {result.candidates.num_rows} candidates ({result.stats['unique_neighbors']} unique "
          f"neighbours) to {args.out}")
    return 0
