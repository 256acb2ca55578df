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


def _data_args(p):
    sub = p.add_subparsers(dest="data_command", required=True)
    lm = sub.add_parser("lfw-masks", help="derive nose/eyes/lips masks for LFW Part Labels (needs ssae[labels])")
    lm.add_argument("--lfw", required=True, help="LFW Part Labels root (images/, labels/)")
    lm.add_argument("--out", default=None, help="cache folder (default: $SSAE_CACHE or ~/.cache/ssae, /lfw_masks)")
    lm.add_argument("--overwrite", action="store_true")


@command("data", _data_args)
def _data(args: argparse.Namespace) -> int:
    """Prepare training data (landmark-derived masks)."""
    import json
    from pathlib import Path

    from .data.landmarks import derive_lfw_masks
    from .fileio import default_cache_dir

    out = Path(args.out) if args.out else default_cache_dir() / "lfw_masks"
    if not (Path(args.lfw) / "images").is_dir():
        raise UserError(f"{args.lfw} is not an LFW Part Labels folder (no images/)")
    try:
        manifest = derive_lfw_masks(args.lfw, out, overwrite=args.overwrite,
                                    progress=lambda k, n: print(f"\r{k + 1}/{n}", end="", file=sys.stderr)
                                    if (k + 1) % 100 == 0 or k + 1 == n else None)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    print(file=sys.stderr)
    print(json.dumps({k: v for k, v in manifest.items() if k != "no_face"} | {"no_face": len(manifest["no_face"])}))
    print(f"masks written to {out}")
    return 0


def _train_args(p):
    from .train.cli import add_args
    add_args(p)


@command("train", _train_args)
def _train(args: argparse.Namespace) -> int:
    """Train an SSAE component (smpn, sae, rb); resumable."""
    from .train.cli import run
    return run(args)


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
