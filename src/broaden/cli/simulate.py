"""``broaden simulate``: the paper's Tables 1–2 protocol on a dataset, with an oracle (issue 6)."""
from __future__ import annotations

import argparse


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() in ("", "all", "none") else int(text)


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _class_groups(text: str) -> list[list[str]]:
    """``0,1,2,3,4:5,6,7,8,9`` → two groups of classes (indices or names)."""
    return [_names(part) or [] for part in text.split(":")]


def _data_options(args: argparse.Namespace) -> dict:
    """The own-data flags that were given (unset ones stay out of the run's configuration)."""
    options = {"id_col": args.id_col, "label_col": args.label_col, "text_cols": _names(args.text), "pair": args.pair,
               "embedding_col": args.embedding_col, "split_col": args.split_col,
               "class_names": _names(args.class_names)}
    return {k: v for k, v in options.items() if v not in (None, False)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="compare Random / Stat-AL / Stat-AL+LSB(-LT) / HW / QBC on a dataset with an oracle (Tables 1-2)",
        description="Warm up a classifier on a random initial labelled set, let every group spend the same "
        "budget, report the multiclass loss and yield of each selection (Table 1) and the test metrics after "
        "retraining (Table 2), over K repeats with paired tests against Stat-AL. Resumable: finished repeats "
        "in --out are reused. Output format: docs/results-format.md.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="registered: clickbait, ag_news, crowdflower_search_relevance, mnist")
    source.add_argument("--data", metavar="FILE", help="your own data: CSV, JSONL or Parquet (docs/simulate.md)")
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
    p.add_argument("--annotators", type=int, default=1, metavar="N",
                   help="independent noisy annotators (%(default)s), each with --label-noise / --confusion: every "
                   "group gets one vote per item; the ActiveLab group may relabel, asking the item's next annotator")
    g = p.add_argument_group("LSB")
    g.add_argument("--max-seeds", "--seeds", dest="max_seeds", type=_optional_int, default=1000, metavar="N|all",
                   help="at most this many seeds, or all (%(default)s, as broaden lsb and select; --seeds is the "
                   "old name)")
    g.add_argument("--seed-threshold", type=float, default=0.5, help="τ1 on d(x) (%(default)s)")
    g.add_argument("--k", type=int, default=10, help="neighbours per seed (%(default)s)")
    g.add_argument("--lookalike-threshold", type=float, default=0.5,
                   help="τ2 of the LSB-LT groups (%(default)s, as the lsb-lt strategy of broaden select)")
    g.add_argument("--latent", choices=("tuned", "frozen", "finetuned"), default="tuned",
                   help="kNN/LT latent: the classifier's hidden layer (tuned), the encoder output (frozen), or "
                   "the [CLS] state of the encoder fine-tuned per repeat on its initial labelled set (finetuned; "
                   "text data; the classifier then uses it too)")
    g.add_argument("--denoise-seeds", action="store_true", help="drop seeds confident learning flags")
    g.add_argument("--variants", default="none",
                   help="extra Stat-AL+LSB-LT groups: none, all, or a list of "
                   "frozen,tuned,nominal,ordinal,denoised,lt-ranked")
    g.add_argument("--index", default="flat", help="FAISS index for kNN (flat = exact; see broaden lsb)")
    g.add_argument("--lsb-fill", action="store_true",
                   help="widen k until each LSB share is filled with candidates passing τ2 (no shortfall to Stat-AL)")
    sc = p.add_argument_group("scenario: where broadening can pay off (DESIGN §3a; docs/simulate.md)")
    sc.add_argument("--scenario", choices=("iid", "drift", "blindspot"), default="iid",
                    help="iid: the paper's protocol; drift: S's correct label changed after the snapshot "
                    "(initial labels of S stay stale); blindspot: S absent from the initial labels")
    sc.add_argument("--subpop", default=None, metavar="SPEC",
                    help="sub-population S: kmeans:CLASS:K:CLUSTER (kmeans:CLASS:K lists the clusters), "
                    "keyword:CLASS:REGEX (CLASS * = any), column:NAME=VALUE, or ids:FILE")
    sc.add_argument("--relabel-to", default=None, metavar="CLASS", help="drift: S's label after the change")
    sc.add_argument("--recent", type=int, default=0, metavar="N",
                    help="recent labelled batch from outside S, scored out-of-sample by the snapshot: LSB seeds "
                    "and the Lookalike model come from it (0: seeds from the initial set, i.i.d. protocol)")
    sc.add_argument("--recent-subpop", type=int, default=0, metavar="N", help="items of S in the recent batch")
    p.add_argument("--validation", type=int, default=500, metavar="N",
                   help="Auto group only: labelled pool items held out to measure each strategy's value on (%(default)s)")
    p.add_argument("--auto-floor", type=float, default=None, metavar="SHARE",
                   help="Auto group only: each arm's least share of a round's budget (default: the allocation's, 0.02)")
    p.add_argument("--groups", default=None,
                   help="comma list of groups (default: Random,Stat-AL,Stat-AL+LSB,Stat-AL+LSB-LT,HW,QBC); "
                   "'NAME (refit)' selects with the snapshot refit on the recent batch (the fair control, e.g. "
                   "'Stat-AL (refit)'); 'NAME@S' gives an LSB group its own share (e.g. Stat-AL+LSB-LT@0.5), 'NAME[VARIANT]' one of the "
                   "--variants (e.g. Stat-AL+LSB-LT[frozen]); 'Auto' "
                   "lets --strategy auto choose the mix each round; BALD, Coreset, BADGE, Cluster-Margin, "
                   "Diverse(entropy), TypiClust run those strategies (docs/diversity.md); 'ActiveLab' relabels "
                   "or labels new with --annotators N, trained on CROWDLAB consensus labels (docs/simulate.md)")
    p.add_argument("--pool-size", type=int, default=None, help="subsample the pool per repeat")
    p.add_argument("--max-items", type=int, default=None, help="stratified subsample of the dataset")
    p.add_argument("--encoder", default=None, help="local HF text encoder folder (default all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", default=None, help="datasets folder (default $BROADEN_DATA_DIR)")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default <broaden cache>/embeddings)")
    p.add_argument("--hidden", type=int, default=256, help="MLP hidden units (%(default)s)")
    p.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                   help="classifier loss weights (%(default)s)")
    d = p.add_argument_group("own data (--data FILE; docs/simulate.md)")
    d.add_argument("--id-col", default=None, help="id column (id)")
    d.add_argument("--label-col", default=None, help="label column: class index or class name (label)")
    d.add_argument("--text", default=None, metavar="COL[,COL...]",
                   help="text field(s) for the frozen encoder, joined like title + description (text)")
    d.add_argument("--pair", action="store_true", help="the first two --text fields are query and item")
    d.add_argument("--embedding-col", default=None,
                   help="ready vectors (list of floats) used as the features (embedding, when present)")
    d.add_argument("--split-col", default=None,
                   help="train/test column (split, when present; else a stratified random 20%% is test)")
    d.add_argument("--class-names", default=None, metavar="A,B,...",
                   help="class order: label names map to these indices (default: names sorted)")
    d.add_argument("--class-groups", default=None, metavar="G:G...",
                   help="merge classes, also with --dataset: '0,1,2,3,4:5,6,7,8,9' (indices or names; the "
                   "original label is kept as column orig_label)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from broaden.simulate import simulate

    simulate(
        Path(args.data) if args.data else args.dataset,
        out=args.out, budget=args.budget, initial=args.initial, lsb_share=args.lsb_share,
        rounds=args.rounds, repeats=args.repeats, seed=args.seed, label_noise=args.label_noise,
        confusion=args.confusion, max_seeds=args.max_seeds, seed_threshold=args.seed_threshold, k=args.k,
        lookalike_threshold=args.lookalike_threshold, latent=args.latent, denoise=args.denoise_seeds,
        variants=args.variants, groups=[g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None,
        pool_size=args.pool_size, max_items=args.max_items, encoder=args.encoder, data_dir=args.data_dir,
        data_options=_data_options(args), class_groups=_class_groups(args.class_groups) if args.class_groups else None,
        cache_dir=args.cache_dir, index=args.index, show_progress=not args.quiet, scenario=args.scenario,
        subpop=args.subpop, relabel_to=args.relabel_to, recent=args.recent, recent_subpop=args.recent_subpop,
        lsb_fill=args.lsb_fill, validation=args.validation, annotators=args.annotators,
        auto_floor=args.auto_floor,
        classifier={"hidden": (args.hidden,),
                    "class_weight": None if args.class_weight == "none" else args.class_weight},
    )
    return 0
