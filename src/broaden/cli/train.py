"""``broaden train CONFIG``: train the multimodal classifier from a TOML/YAML config (DESIGN §1)."""
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the vision-language(-audio) classifier from a config file",
        description="Train the classifier described by CONFIG (TOML or YAML: out, [data], [model], [train]). "
        "Defaults follow the paper: Adam, lr 4e-5, batch 64, up to 5 epochs, early stop on the eval metric. "
        "An interrupted run continues from RUN/checkpoint when started again.",
    )
    p.add_argument("config", help="training config (.toml, .yaml or .json)")
    p.add_argument("--out", default=None, help="run directory (overrides `out` in the config)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if the run directory holds a checkpoint")
    p.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 --set model.fusion=vlmae (repeatable)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimisation steps in total (resumable later)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from broaden.models.train import train

    result = train(args.config, out=args.out, resume=args.resume, progress=not args.quiet,
                   max_steps=args.max_steps, overrides=dict(args.overrides))
    print(json.dumps({"run_dir": str(result.run_dir), "model": str(result.model_dir), "metric": result.metric,
                      "best_metric": result.best_metric, "best_epoch": result.best_epoch,
                      "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
                      "skipped_items": result.skipped_items}, indent=2))
    return 0
