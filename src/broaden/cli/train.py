"""``broaden train``: a text classifier from a labelled file (``--data``), or the multimodal classifier from
a TOML/YAML config (DESIGN §1)."""
from __future__ import annotations

import argparse


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    import yaml

    try:  # YAML scalars: numbers, booleans, null, [lists] and strings all read naturally
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the value in {text!r} ({exc})") from exc


def _names(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a text classifier on a labelled CSV/JSONL/Parquet file, or the multimodal classifier "
        "from a config file",
        description="Either `broaden train --data labeled.csv --text COL --label COL --out RUN` (a text "
        "classifier on a local Hugging Face encoder, default the packaged all-MiniLM-L6-v2: --encoder frozen "
        "trains an MLP head on cached sentence embeddings, --encoder finetune trains encoder and head end to "
        "end), or `broaden train CONFIG` (TOML or YAML: out, [data], [model], [train]). Defaults follow the "
        "paper: Adam, lr 4e-5, up to 5 epochs, early stop on a held-out split; on the same split it fits "
        "temperature scaling (Guo et al. 2017) into RUN/model/calibration.json, which `broaden score` applies. "
        "An interrupted fine-tune continues from RUN/checkpoint when started again.",
    )
    p.add_argument("config", nargs="?", default=None, help="training config (.toml, .yaml or .json)")
    p.add_argument("--out", default=None, help="run directory (overrides `out` in a config)")
    g = p.add_argument_group("a text classifier from a labelled file")
    g.add_argument("--data", default=None, help="labelled file: .csv, .jsonl, .json or .parquet")
    g.add_argument("--text", type=_names, default=None, metavar="COL[,COL…]",
                   help="text column(s); several are joined (with --pair: query, item)")
    g.add_argument("--label", default="label", help="label column: class names or indices (default: %(default)s)")
    g.add_argument("--classes", type=_names, default=None, metavar="A,B,…",
                   help="class names in index order (default: the sorted names found, or 0…C−1)")
    g.add_argument("--id", dest="id_col", default=None,
                   help="id column (default: `id` when the file has one, else the row number)")
    g.add_argument("--pair", action="store_true", help="score (query, item) pairs: two --text columns")
    g.add_argument("--encoder", choices=("frozen", "finetune"), default="frozen",
                   help="frozen: MLP head on cached embeddings (fast); finetune: end to end (default: %(default)s)")
    g.add_argument("--model-path", default=None,
                   help="local Hugging Face encoder folder (default: the packaged all-MiniLM-L6-v2)")
    g.add_argument("--max-length", type=int, default=None,
                   help="tokens per text (default: the encoder's own for frozen, 128 for finetune)")
    g.add_argument("--epochs", type=int, default=5, help="finetune: at most this many epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=32, help="finetune: batch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=4e-5, help="finetune: Adam learning rate (default: %(default)s)")
    g.add_argument("--eval-fraction", type=float, default=0.1,
                   help="held out for early stopping and temperature scaling (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    g.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; --threads is the old name)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if the run directory holds a checkpoint")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="config only: override a value, e.g. --set train.lr=1e-4 --set model.fusion=vlmae")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimisation steps in total (resumable later)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from broaden.errors import ConfigError

    if (args.config is None) == (args.data is None):
        raise ConfigError("give either a config file or --data FILE --text COL --label COL --out RUN")
    if args.data is not None:
        return _run_text(args)
    from broaden.models.train import train

    result = train(args.config, out=args.out, resume=args.resume, show_progress=not args.quiet,
                   max_steps=args.max_steps, overrides=dict(args.overrides))
    print(json.dumps({"run_dir": str(result.run_dir), "model": str(result.model_dir), "metric": result.metric,
                      "best_metric": result.best_metric, "best_epoch": result.best_epoch,
                      "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
                      "skipped_items": result.skipped_items, "calibration": result.calibration}, indent=2))
    return 0


def _run_text(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from broaden.errors import ConfigError
    from broaden.models.textrun import train_text

    if not args.text or not args.out:
        raise ConfigError("--data needs --text COL[,COL…] and --out RUN")
    if args.overrides:
        raise ConfigError("--set applies to a config file; with --data use the flags (--lr, --epochs, …)")
    result = train_text(args.data, Path(args.out), text=args.text, label=args.label, classes=args.classes,
                        id_col=args.id_col, pair=args.pair, encoder=args.encoder, model_path=args.model_path,
                        max_length=args.max_length, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        eval_fraction=args.eval_fraction, seed=args.seed, num_threads=args.num_threads,
                        resume=args.resume, max_steps=args.max_steps, show_progress=not args.quiet)
    print(json.dumps({"run_dir": str(result.run_dir), "encoder": result.mode, "items": result.n_items,
                      "classes": result.class_names, **result.summary}, indent=2))
    return 0
