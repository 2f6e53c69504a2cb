"""Argument helpers shared by the command modules (no commands here)."""
from __future__ import annotations

import argparse

from broaden.io import Columns


def add_column_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("column names")
    g.add_argument("--id-col", default="id", help="id column (default: %(default)s)")
    g.add_argument("--label-col", default="label", help="label column (default: %(default)s)")
    g.add_argument("--probs-col", default="probs", help="probability column (default: %(default)s)")
    g.add_argument("--embedding-col", default="embedding", help="embedding column (default: %(default)s)")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where the pool is processed: this process (default) or a Ray cluster")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster address, e.g. auto or ray://head:10001 (default: $RAY_ADDRESS, else a "
                   "local Ray instance)")


def engine_from_args(args: argparse.Namespace):
    """The engine the flags name (Ray is imported only for --engine ray)."""
    from broaden.engines import get_engine

    return get_engine(args.engine, args.ray_address)


def columns_from_args(args: argparse.Namespace) -> Columns:
    return Columns(id=args.id_col, label=args.label_col, probs=args.probs_col, embedding=args.embedding_col)


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
