"""The ``stepwise-ntk`` command line: one subcommand per experiment, one output folder per run.

Each subcommand's options are the fields of its settings dataclass (``--help`` lists them),
optionally read from ``--config FILE`` (.json or .toml), flags overriding the file. Bad
input (a TypeError or ValueError of the settings, a ValueError of the run such as a kernel
too large for memory, a missing file) and a run that failed in a way its message explains
(``RunFailedError``: diverged training) end with a one-line ``stepwise-ntk CMD: error: ...``
on stderr and exit status 2.

Example:
    $ stepwise-ntk linear --out runs/linear          # the paper's linear-model staircase
    $ stepwise-ntk linear --n-pairs 200 --d 4 --out runs/small
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from stepwise_ntk.experiments._settings import (
    add_settings_arguments,
    load_config_file,
    resolve_settings,
    settings_to_dict,
)

__all__ = ["main", "SUBCOMMANDS"]

# name -> (module, settings class, run function, one-line description); imported lazily so
# `stepwise-ntk --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "linear": (
        "stepwise_ntk.experiments._linear",
        "LinearSettings",
        "run_linear",
        "linear-model Barlow Twins on CIFAR-10 pairs: staircase, eigenvalues, theory overlay",
    ),
    "kernel": (
        "stepwise_ntk.experiments._kernel",
        "KernelSettings",
        "run_kernel",
        "the same with the infinite-width NTK of a registered architecture (--arch)",
    ),
    "network": (
        "stepwise_ntk.experiments._network",
        "NetworkSettings",
        "run_network",
        "train a finite Flax network (small init) on CIFAR-10 pairs and overlay its NTK theory",
    ),
    "sweep": (
        "stepwise_ntk.experiments._sweep",
        "SweepSettings",
        "run_sweep",
        "the network at several widths: alignment and step-time ratio with the NTK theory vs width",
    ),
    "precondition": (
        "stepwise_ntk.experiments._precondition",
        "PreconditionSettings",
        "run_precondition",
        "spectral preconditioning P(C) = (C+εI)^-k vs plain: kernel model and networks, speed-up table",
    ),
    "augmentations": (
        "stepwise_ntk.experiments._augmentations",
        "AugmentationsSettings",
        "run_augmentations",
        "the contrastive modes under several augmentation settings: γ spectra, alignment, what they track",
    ),
    "methods": (
        "stepwise_ntk.experiments._methods",
        "MethodsSettings",
        "run_methods",
        "Barlow Twins, SimCLR and VICReg from one initialisation: held-out alignment table and staircases",
    ),
}


def _load(name: str):
    module_name, settings_name, run_name, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, settings_name), getattr(module, run_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepwise-ntk",
        description="Kernel (NTK) theory of stepwise self-supervised learning: experiments with plots.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, _, description) in SUBCOMMANDS.items():
        settings_cls, _ = _load(name)
        p = sub.add_parser(name, help=description, description=description)
        p.add_argument("--out", default=f"runs/{name}", help="output directory (default: runs/%(prog)s)")
        p.add_argument("--config", default=None, help="a .json or .toml file of settings; flags override it")
        p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
        add_settings_arguments(p, settings_cls)
    return parser


def _error(prefix: str, err: BaseException) -> int:
    message = " ".join(str(err).split())
    print(f"{prefix}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stepwise-ntk`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0: the run finished; 2: bad input or an explained failure (one line on stderr); 130:
    interrupted (the output folder is marked INCOMPLETE).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    import jax

    # The experiments compare against float64 theory; an application may set this globally.
    jax.config.update("jax_enable_x64", True)
    settings_cls, run = _load(args.command)
    prefix = f"stepwise-ntk {args.command}"
    from stepwise_ntk.experiments._run_dir import RunFailedError, run_directory

    try:
        config = load_config_file(args.config) if args.config else {}
        settings = resolve_settings(settings_cls, args, config)
    except (TypeError, ValueError, FileNotFoundError) as err:
        return _error(prefix, err)
    try:
        with run_directory(args.out, args.command, settings_to_dict(settings), overwrite=args.overwrite) as out:
            summary = run(settings, out, progress=args.progress)
    except (ValueError, FileNotFoundError, RunFailedError) as err:
        return _error(prefix, err)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; {args.out} is marked INCOMPLETE", file=sys.stderr)
        return 130
    print(f"{prefix}: wrote {args.out}")
    if summary:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
