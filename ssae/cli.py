"""The `ssae` command line. Subcommands register themselves in `COMMANDS`."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]):
    def deco(fn):
        COMMANDS[name] = (add_args, fn)
        return fn
    return deco


@command("info", lambda p: None)
def _info(args: argparse.Namespace) -> int:
    from .info import format_info, gather

    print(format_info(gather()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="ssae", description="SemanticStyle Autoencoder: localized face editing")
    parser.add_argument("--version", action="version", version=f"ssae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _fn) in COMMANDS.items():
        p = sub.add_parser(name, help=(_fn.__doc__ or "").strip().splitlines()[0] if _fn.__doc__ else None)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _add, fn = COMMANDS[args.command]
    try:
        return fn(args)
    except UserError as e:
        print(f"ssae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
