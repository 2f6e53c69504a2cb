"""``broaden datasets list|fetch|build``: the real datasets and the benchmark sets built from them."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("datasets", help="list, fetch or build datasets in the data directory")
    sub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None,
                        help="data directory (default: $BROADEN_DATA_DIR, else the user cache folder)")

    ls = sub.add_parser("list", parents=[common], help="show which datasets are present and verified")
    ls.set_defaults(func=_list)

    fetch = sub.add_parser("fetch", parents=[common],
                           help="download a dataset from its pinned public address (checksummed)")
    fetch.add_argument("name")
    fetch.set_defaults(func=_fetch)

    build = sub.add_parser("build", parents=[common],
                           help="build a benchmark set from the real datasets (av-digits: see docs/datasets.md)")
    build.add_argument("name", help="benchmark to build: av-digits")
    build.add_argument("--out", required=True, help="output folder (items.parquet, pretrain.parquet, manifest.json)")
    build.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    build.add_argument("--frames", type=int, default=3, help="MNIST frames per clip")
    build.add_argument("--audio-sensitive-fraction", type=float, default=0.3,
                       help="share of clips whose frames and text are independent of the label")
    build.add_argument("--caption-fraction", type=float, default=0.5,
                       help="share of clips whose caption names the frame digit")
    build.add_argument("--pretrain-speakers", type=int, default=2,
                       help="FSDD speakers reserved for audio-encoder pre-training")
    build.add_argument("--test-speakers", type=int, default=2, help="FSDD speakers reserved for the test split")
    build.set_defaults(func=_build)


def _list(args) -> int:
    from rich.console import Console

    from broaden.datasets.listing import list_datasets, status_table

    statuses = list_datasets(args.data_dir)
    Console().print(status_table(statuses, args.data_dir))
    return 0


def _fetch(args) -> int:
    from broaden.datasets.fetch import fetch_dataset

    folder = fetch_dataset(args.name, args.data_dir)
    print(f"{args.name}: verified in {folder}")
    return 0


def _build(args) -> int:
    from broaden.datasets.avdigits import build_dataset

    manifest = build_dataset(
        args.name, args.out, args.seed, args.data_dir, frames=args.frames,
        audio_sensitive_fraction=args.audio_sensitive_fraction, caption_fraction=args.caption_fraction,
        pretrain_speakers=args.pretrain_speakers, test_speakers=args.test_speakers,
    )
    sizes = manifest["sizes"]
    print(f"{args.name}: {sizes['train']['clips']} train / {sizes['test']['clips']} test clips "
          f"({sizes['train']['audio_sensitive']} / {sizes['test']['audio_sensitive']} audio-sensitive), "
          f"{sizes['pretrain_recordings']} pre-training recordings in {args.out}")
    return 0
