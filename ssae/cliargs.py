"""Build argparse options from configuration dataclasses (one flag per field; nested dataclasses flattened)."""
from __future__ import annotations

import argparse
import dataclasses
import typing


def _field_type(tp):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _field_type(args[0])
    if origin is tuple:
        return ("tuple", args[0] if args else str)
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: set[str] = frozenset()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _field_type(hints[f.name])
        flag = "--" + (prefix + f.name).replace("_", "-")
        if dataclasses.is_dataclass(tp):
            add_dataclass_args(parser, tp, prefix="", skip=skip)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_ = f"(default: {default})"
        if tp is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_)
        elif isinstance(tp, tuple) and tp[0] == "tuple":
            parser.add_argument(flag, dest=prefix + f.name, nargs="*", type=tp[1], default=default, help=help_)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=tp if tp in (int, float) else str, default=default,
                                help=help_)


def dataclass_from_args(cls, args: argparse.Namespace):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = _field_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = dataclass_from_args(tp, args)
        elif hasattr(args, f.name):
            v = getattr(args, f.name)
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)
