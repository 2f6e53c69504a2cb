"""``broaden simulate``: the paper's Tables 1–2 protocol on a dataset, with an oracle (issue 6)."""
from __future__ import annotations

import argparse


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "all", "none") else int(text)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="compare Random / Stat-AL / Stat-AL+LSB(-LT) / HW / QBC on a dataset with an oracle (Tables 1-2)",
        description="Warm up a classifier on a random initial labelled set, let every group spend the same "
        "budget, report the multiclass loss and yield of each selection (Table 1) and the test metrics after "
        "retraining (Table 2), over K repeats with paired tests against Stat-AL. Resumable: finished repeats "
        "in --out are reused. Output format: docs/results-format.md.",
    )
    p.add_argument("--dataset", required=True, help="clickbait, ag_news, crowdflower_search_relevance, mnist")
    p.add_argument("--out", required=True, help="result folder (created; resumed when it exists)")
    p.add_argument("--budget", type=int, default=1000, help="items each group selects per round (%(default)s)")
    p.add_argument("--initial", type=int, default=1000, help="initial random labelled set (%(default)s)")
    p.add_argument("--lsb-share", type=float, default=0.2, help="share S of the budget from LSB (%(default)s)")
    p.add_argument("--rounds", type=int, default=1, help="rounds R of Algorithm 1 (%(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="repeats K with different seeds (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of repeat 0; repeat r uses seed + r")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--label-noise", type=float, default=0.0,
                       help="oracle error rate: a wrong class uniformly at random (test split stays clean)")
    noise.add_argument("--confusion", default=None, metavar="JSON",
                       help="oracle confusion matrix, rows = true class: P(answer | true class)")
    g = p.add_argument_group("LSB")
    g.add_argument("--seeds", type=_optional_int, default=None, metavar="N|all", help="cap on seed count (all)")
    g.add_argument("--seed-threshold", type=float, default=0.5, help="τ1 on d(x) (%(default)s)")
    g.add_argument("--k", type=int, default=10, help="neighbours per seed (%(default)s)")
    g.add_argument("--lookalike-threshold", type=float, default=0.5, help="τ2 on the LT score (%(default)s)")
    g.add_argument("--latent", choices=("tuned", "frozen"), default="tuned",
                   help="kNN/LT latent: the classifier's hidden layer (tuned) or the encoder output (frozen)")
    g.add_argument("--denoise-seeds", action="store_true", help="drop seeds confident learning flags")
    g.add_argument("--variants", default="none",
                   help="extra Stat-AL+LSB-LT groups: none, all, or a list of "
                   "frozen,tuned,nominal,ordinal,denoised,lt-ranked")
    g.add_argument("--index", default="flat", help="FAISS index for kNN (flat = exact; see broaden lsb)")
    p.add_argument("--groups", default=None,
                   help="comma list of base groups (default all: Random,Stat-AL,Stat-AL+LSB,Stat-AL+LSB-LT,HW,QBC)")
    p.add_argument("--pool-size", type=int, default=None, help="subsample the pool per repeat")
    p.add_argument("--max-items", type=int, default=None, help="stratified subsample of the dataset")
    p.add_argument("--encoder", default=None, help="local HF text encoder folder (default all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", default=None, help="datasets folder (default $BROADEN_DATA_DIR)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default <broaden cache>/embeddings)")
    p.add_argument("--hidden", type=int, default=256, help="MLP hidden units (%(default)s)")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="classifier loss weights (%(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from broaden.simulate import simulate

    simulate(
        args.dataset, out=args.out, budget=args.budget, initial=args.initial, lsb_share=args.lsb_share,
        rounds=args.rounds, repeats=args.repeats, seed=args.seed, label_noise=args.label_noise,
        confusion=args.confusion, seeds=args.seeds, seed_threshold=args.seed_threshold, k=args.k,
        lookalike_threshold=args.lookalike_threshold, latent=args.latent, denoise=args.denoise_seeds,
        variants=args.variants, groups=[g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None,
        pool_size=args.pool_size, max_items=args.max_items, encoder=args.encoder, data_dir=args.data_dir,
        cache_dir=args.cache_dir, index=args.index, progress=not args.quiet,
        classifier={"hidden": (args.hidden,),
                    "class_weight": None if args.class_weight == "none" else args.class_weight},
    )
    return 0
