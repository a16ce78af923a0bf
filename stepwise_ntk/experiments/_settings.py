"""Experiment settings: frozen dataclasses <-> command-line flags and config files.

One settings dataclass per CLI subcommand is the single source of its options: each field
becomes a ``--flag`` (underscores -> dashes) with the field's default and its help text
from ``field(metadata={"help": ...})``; a JSON or TOML config file supplies values, and
flags given on the command line override the file. Unknown keys and values of the wrong
type are rejected with a message naming the key.

Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class S:
    ...     n: int = 3
    >>> parser = argparse.ArgumentParser(); add_settings_arguments(parser, S)
    >>> resolve_settings(S, parser.parse_args(["--n", "5"]))
    S(n=5)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["add_settings_arguments", "resolve_settings", "load_config_file", "settings_to_dict"]


def _base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, is_optional) for int | float | str | bool | tuple[...] | X | None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base, _ = _base_type(args[0])
        return base, True
    if origin is tuple:
        return tuple, False
    return tp, False


def _tuple_item_type(tp: Any) -> type:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    args = typing.get_args(tp)
    return args[0] if args else str


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_optional(parse):
    def inner(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    return inner


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of the frozen dataclass ``cls`` (default: not given)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        base, optional = _base_type(tp)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
        elif base is tuple:
            kwargs["type"] = _tuple_item_type(tp)
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _parse_optional(base) if optional else base
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass an existing .json or .toml file.")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            return json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    raise ValueError(f"config file {path} must end in .json or .toml.")


def _coerce(cls_name: str, name: str, tp: Any, value: Any) -> Any:
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{cls_name}.{name} may not be null.")
    if base is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"setting {name!r} must be a list, got {value!r}.")
        item = _tuple_item_type(tp)
        return tuple(_coerce(cls_name, name, item, v) for v in value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, str, bool) and not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"setting {name!r} must be {base.__name__}, got {value!r}.")
    return value


def resolve_settings(cls: type, args: argparse.Namespace | None = None, config: dict | None = None):
    """Build ``cls`` from defaults, then ``config`` (file values), then flags in ``args``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in (config or {}).items():
        key_ = key.replace("-", "_")
        if key_ not in names:
            raise ValueError(
                f"unknown setting {key!r} in the config file; known settings: {', '.join(sorted(names))}."
            )
        values[key_] = _coerce(cls.__name__, key_, hints[key_], value)
    for key, value in vars(args or argparse.Namespace()).items():
        if key in names:
            values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def settings_to_dict(settings) -> dict[str, Any]:
    """JSON-ready dict of a settings dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))
