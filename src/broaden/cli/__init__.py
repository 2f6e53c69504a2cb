"""Command-line entry point: a thin layer that parses arguments and calls the Python API.

Each module in this package that defines ``register(subparsers)`` adds its commands; the command
function it attaches (``set_defaults(func=...)``) receives the parsed namespace and returns an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from broaden import __version__
from broaden.errors import BroadenError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broaden",
        description="Choose what to annotate next (statistical active learning and Latent Space "
        "Broadening), manage annotation rounds, train and evaluate the classifier.",
    )
    parser.add_argument("--version", action="version", version=f"broaden {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Discovery keeps each command in its own module; no central list to edit when one is added.
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


# Library errors name parameters ("pass labeled=", "logits=True"); on the command line they are flags.
_PARAMETER = re.compile(r"\b([a-z][a-z_]*)=(?:True\b)?(?![\w.'\"\[{(-])")


def as_flags(message: str) -> str:
    """``name=`` (or ``name=True``) in a library error, as the flag ``--name`` the CLI user typed."""
    return _PARAMETER.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BroadenError as exc:
        from rich.console import Console
        from rich.markup import escape

        message = as_flags(str(exc))
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
