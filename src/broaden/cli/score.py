"""``broaden score --model RUN --data ITEMS --out SCORED.parquet``: batched inference (DESIGN §5)."""
from __future__ import annotations

import argparse

from broaden.cli.common import add_column_flags, add_engine_flags, columns_from_args, engine_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score an items table with a trained model, writing the scored table",
        description="Run a trained model over ITEMS (Parquet file or directory) and write probs, embedding "
        "(h_cls) and, for vlmae models, audio_attention, carrying the items' other columns (but frames) "
        "through. Items whose frames or audio cannot be used are listed in the errors file, never dropped "
        "silently.",
    )
    p.add_argument("--model", required=True, help="run directory from `broaden train` (or its model folder)")
    p.add_argument("--data", required=True,
                   help="items table (Parquet file or directory); for a run of `broaden train --data`, a .csv, "
                   ".jsonl, .json or .parquet file with the run's text column(s)")
    p.add_argument("--out", required=True, help="scored table to write (Parquet)")
    p.add_argument("--errors-out", default=None,
                   help="where to list the items that could not be scored (default: OUT.errors.parquet)")
    p.add_argument("--batch-size", type=int, default=128, help="items per forward pass (default: %(default)s)")
    p.add_argument("--audio-cache", default=None, help="encoded-audio cache folder (default: RUN/audio_cache)")
    p.add_argument("--whisper-path", default=None, help="where the frozen Whisper checkpoint is now, if moved")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--num-threads", "--threads", dest="num_threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; for a text run one per core this process may "
                   "use; --threads is the old name)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="text runs: auto uses bf16 only where the hardware has it and a calibration sample "
                   "shows the same predictions (argmax ≥ 99.9 %%, probabilities within 0.01) and a speed-up "
                   "(default: %(default)s)")
    p.add_argument("--mc-dropout", type=int, default=0, metavar="N",
                   help="also run N >= 2 forward passes with dropout on (Monte Carlo dropout) and write them as "
                   "committee columns probs_m0..probs_m{N-1}, their mean as probs, for --strategy bald or qbc "
                   "(default: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the --mc-dropout passes (default: 0)")
    p.add_argument("--no-calibration", dest="calibrate", action="store_false",
                   help="write the raw softmax probabilities instead of the ones calibrated with the temperature "
                   "`broaden train` fitted on its validation split (RUN/model/calibration.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_column_flags(p)
    add_engine_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from broaden.models.score import score
    from broaden.models.textrun import is_text_run

    if is_text_run(args.model):
        return _run_text(args)
    with engine_from_args(args) as engine:
        result = score(args.model, args.data, args.out, batch_size=args.batch_size, columns=columns_from_args(args),
                       errors_out=args.errors_out, audio_cache=args.audio_cache, whisper_path=args.whisper_path,
                       device=args.device, num_threads=args.num_threads, show_progress=not args.quiet, engine=engine,
                       mc_dropout=args.mc_dropout, seed=args.seed, calibrate=args.calibrate)
    console = Console(stderr=True)
    console.print(f"scored {result.n_scored} item(s) -> {result.out}{_calibrated(result)}", highlight=False)
    if result.n_failed:
        console.print(f"[yellow]warning:[/] {result.n_failed} item(s) could not be scored; reasons in "
                      f"{result.errors_path}", highlight=False)
    return 0


def _run_text(args: argparse.Namespace) -> int:
    from rich.console import Console

    from broaden.errors import ConfigError
    from broaden.models.textscore import score_text

    if args.engine != "local":
        raise ConfigError("a text run is scored locally; --engine ray is for Parquet items of a config run")
    result = score_text(args.model, args.data, args.out, columns=columns_from_args(args),
                        errors_out=args.errors_out, batch_size=args.batch_size, precision=args.precision,
                        device=args.device, num_threads=args.num_threads, show_progress=not args.quiet,
                        mc_dropout=args.mc_dropout, seed=args.seed, calibrate=args.calibrate)
    console = Console(stderr=True)
    console.print(f"scored {result.n_scored} item(s) -> {result.out} ({result.precision['dtype']}: "
                  f"{result.precision['reason']}){_calibrated(result)}", highlight=False)
    if result.n_failed:
        console.print(f"[yellow]warning:[/] {result.n_failed} item(s) could not be scored; reasons in "
                      f"{result.errors_path}", highlight=False)
    return 0


def _calibrated(result) -> str:
    if result.temperature is None:
        return "; probabilities uncalibrated"
    return f"; probabilities calibrated with temperature {result.temperature:.3g}"
