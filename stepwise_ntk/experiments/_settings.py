"""Experiment settings: frozen dataclasses <-> command-line flags and config files.

One settings dataclass per CLI subcommand is the single source of its options: each field
becomes a ``--flag`` (underscores -> dashes) with the field's default and its help text
from ``field(metadata={"help": ...})``; a JSON or TOML config file supplies values, and
flags given on the command line override the file. Unknown keys are rejected with a message
naming the key; :func:`check_settings` (called by each settings class's ``__post_init__``)
checks every field against its annotation and its metadata bounds (``"min"``, ``"above"``,
``"max"``, ``"choices"``), naming the flag: TypeError for a wrong type, ValueError for a
wrong value.

Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class S:
    ...     n: int = 3
    >>> parser = argparse.ArgumentParser(); add_settings_arguments(parser, S)
    >>> resolve_settings(S, parser.parse_args(["--n", "5"]))
    S(n=5)
    >>> @dataclasses.dataclass(frozen=True)
    ... class T:
    ...     n: int = dataclasses.field(default=3, metadata={"min": 1})
    ...     def __post_init__(self):
    ...         check_settings(self)
    >>> T(n=0)
    Traceback (most recent call last):
    ...
    ValueError: --n must be an integer ≥ 1, got 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stepwise_ntk._checks import check_bool, check_choice, check_int, check_number, check_type

__all__ = [
    "PRECONDITIONER_FORMS",
    "PRECONDITIONER_PARTS",
    "PreconditionedRunFlags",
    "PreconditionerFlags",
    "SEED_MAX",
    "add_settings_arguments",
    "check_settings",
    "flag",
    "load_config_file",
    "resolve_settings",
    "settings_to_dict",
]


SEED_MAX = 2**32 - 1


def flag(name: str) -> str:
    """The command-line flag of a settings field: ``"n_pairs"`` -> ``"--n-pairs"``."""
    return "--" + name.replace("_", "-")


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


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(name: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> None:
    base, optional = _base_type(tp)
    if value is None and optional:
        return
    if base is tuple:
        check_type(name, value, tuple, "a tuple (a list in a config file)")
        for i, item in enumerate(value):
            _check_value(f"{name}[{i}]", _tuple_item_type(tp), item, meta)
        return
    hint = meta.get("hint", "")
    if base is bool:
        check_bool(name, value)
    elif base is int and name == "--seed":
        check_int(name, value, low=meta.get("min", 0), high=meta.get("max", SEED_MAX),
                  hint=hint or " (a 32-bit PRNG seed)")
    elif base is int:
        check_int(name, value, low=meta.get("min"), high=meta.get("max"), hint=hint)
    elif base is float:
        above = meta.get("above")
        low = meta.get("min") if above is None else above
        check_number(name, value, low=low, high=meta.get("max"), open_low=above is not None, hint=hint)
    else:
        check_type(name, value, base)
        if "choices" in meta:
            check_choice(name, value, meta["choices"])


def check_settings(settings: Any) -> None:
    """Check every field of the settings dataclass ``settings``, naming it by its ``--flag``.

    The annotation gives the type: ``int`` (:func:`~stepwise_ntk._checks.check_int`),
    ``float`` (:func:`~stepwise_ntk._checks.check_number`: a finite real number), ``bool``,
    ``str``, ``X | None`` (None allowed), ``tuple[X, ...]`` (each item an ``X``). The field's
    metadata gives the values: ``"min"`` (``≥``) or ``"above"`` (``>``), ``"max"``,
    ``"choices"``, and a ``"hint"`` added to the message. A field named ``seed`` is a PRNG
    seed: ``0 ≤ seed ≤ SEED_MAX = 2³² − 1`` unless its metadata says otherwise (what
    ``jax.random.key`` takes without x64, and numpy's subset seeds take too).

    Raises:
      TypeError: a field of the wrong type (e.g. a string for an integer).
      ValueError: a value out of its bounds or not one of its choices.
    """
    hints = _hints(type(settings))
    for f in dataclasses.fields(settings):
        _check_value(flag(f.name), hints[f.name], getattr(settings, f.name), f.metadata)


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of the frozen dataclass ``cls`` (default: not given)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        base, optional = _base_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
            # A bare ``--flag`` means true; ``--flag false`` still turns a default-on one off.
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        elif base is tuple:
            kwargs["type"] = _tuple_item_type(tp)
            # A bare ``--flag`` is the empty list where a field allows one ("may_be_empty").
            kwargs["nargs"] = "*" if f.metadata.get("may_be_empty") else "+"
        else:
            kwargs["type"] = _parse_optional(base) if optional else base
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag(f.name), **kwargs)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass an existing .json or .toml file.")
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"config file {path} must end in .json or .toml.")
    text = path.read_text()
    try:
        config = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"config file {path} must hold one object of settings (name: value), got {type(config).__name__}."
        )
    return config


def _coerce(tp: Any, value: Any) -> Any:
    """A config-file value in the field's Python form: lists as tuples, integers as floats.

    Anything else is passed on unchanged; the settings class checks it.
    """
    base, _ = _base_type(tp)
    if base is tuple and isinstance(value, list):
        return tuple(_coerce(_tuple_item_type(tp), v) for v in value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def resolve_settings(cls: type, args: argparse.Namespace | None = None, config: dict | None = None):
    """Build ``cls`` from defaults, then ``config`` (file values), then flags in ``args``.

    Raises:
      ValueError: an unknown key in ``config``; what ``cls`` raises for a bad value.
      TypeError: what ``cls`` raises for a value of the wrong type.
    """
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in (config or {}).items():
        key_ = key.replace("-", "_")
        if key_ not in names:
            raise ValueError(
                f"unknown setting {key!r} in the config file; known settings: {', '.join(sorted(names))}."
            )
        values[key_] = _coerce(hints[key_], value)
    for key, value in vars(args or argparse.Namespace()).items():
        if key in names:
            values[key] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def settings_to_dict(settings) -> dict[str, Any]:
    """JSON-ready dict of a settings dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


# ------------------------------------------------------------------------------ shared flags

# The preconditioner's forms (stepwise_ntk.theory.PRECONDITIONERS; "none" is the plain flow, a
# cross-check). A literal so that this module imports no JAX; a test checks it against the theory.
PRECONDITIONER_FORMS = ("none", "inverse", "power")
# Which part of the gradient it multiplies (stepwise_ntk.theory.PRECONDITIONED_PARTS).
PRECONDITIONER_PARTS = ("all", "invariant")


@dataclasses.dataclass(frozen=True)
class PreconditionerFlags:
    """The spectral preconditioner ``P(C) = (C₊ + εI)^(−k)`` as flags: ``--form``, ``--eps``,
    ``--power``, ``--part``, ``--floor``.

    A mixin of every subcommand that runs the preconditioned flow or trains with it (put it
    first among the bases so its flags follow the subcommand's own): ``precondition`` (its
    sweep), and through :class:`PreconditionedRunFlags` ``linear``, ``kernel`` and ``network``.

    Example:
        >>> PreconditionerFlags(eps=0.1).preconditioner().describe()
        '(C+0.1I)^-1'
    """

    form: str = dataclasses.field(
        default="inverse",
        metadata={"help": "preconditioner P(C) = (C+εI)^-k: inverse (k = 1), power (k = --power) or none",
                  "choices": PRECONDITIONER_FORMS},
    )
    eps: float = dataclasses.field(default=1e-2, metadata={"help": "ε of the preconditioner", "above": 0})
    power: float = dataclasses.field(default=1.0, metadata={"help": "k for --form power", "above": 0})
    part: str = dataclasses.field(
        default="all",
        metadata={"help": "the part of the embedding gradient P(C) multiplies: all, or invariant (the mean "
                          "over the two views of each pair; the pair difference gets min(P, I), never a boost)",
                  "choices": PRECONDITIONER_PARTS},
    )
    floor: bool = dataclasses.field(
        default=False,
        metadata={"help": "floor P at I, max((C+εI)^-k, I): boost only, and leave the directions past 1-ε "
                          "(SimCLR's growth past 1) at the plain rate"},
    )

    def __post_init__(self):
        # Cooperative: the subcommand's own settings (after this mixin in the MRO) check every
        # field and may fill in defaults; alone, the mixin checks its fields itself.
        parent = getattr(super(), "__post_init__", None)
        if parent is None:
            check_settings(self)
        else:
            parent()

    def preconditioner(self, eps: float | None = None):
        """The :class:`stepwise_ntk.theory.Preconditioner` of these flags (``eps`` overrides ``--eps``)."""
        from stepwise_ntk.theory import Preconditioner

        return Preconditioner(self.form, eps=self.eps if eps is None else eps, power=self.power, part=self.part,
                              floor=self.floor)


@dataclasses.dataclass(frozen=True)
class PreconditionedRunFlags(PreconditionerFlags):
    """``--precondition`` (default off) with the preconditioner's flags: also run preconditioned.

    Off, the run is the plain one, its outputs unchanged. On, the subcommand also runs the
    preconditioned flow (or training) from the same start and overlays the two in
    ``precondition.png``, with the step times and the speed-up under ``precondition`` in
    ``results.json``.

    Example:
        >>> s = PreconditionedRunFlags(precondition=True, form="power", power=0.5)
        >>> s.preconditioner().describe()
        '(C+0.01I)^-0.5'
    """

    precondition: bool = dataclasses.field(
        default=False,
        metadata={"help": "also run with the spectral preconditioner (--form, --eps, --power) from the same start "
                          "and overlay it on the plain run: precondition.png, results.json 'precondition'"},
    )
