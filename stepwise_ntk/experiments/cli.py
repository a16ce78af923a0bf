"""The ``stepwise-ntk`` command line: one subcommand per experiment, one output folder per run.

Each subcommand's options are the fields of its settings dataclass (``--help`` lists them),
optionally read from ``--config FILE`` (.json or .toml), flags overriding the file.

One validation pass (:func:`prepare`) runs before any work and before the output folder is
touched: the flags and the config file (types, ranges, choices), the combinations (the
architecture and its options with the image size, ``--downsample`` with the 32×32 images,
the image counts with the data folder), the data folder and ``--out``. Bad input ends with
one line ``stepwise-ntk CMD: error: ...`` naming the flag or key, on stderr, exit status 2;
so does a run that failed in a way its message explains (``RunFailedError``: diverged
training; a ``ValueError`` of the run, e.g. a kernel too large for the memory).

The run itself writes into ``OUT.partial`` and replaces ``OUT`` only when it has finished
(:mod:`stepwise_ntk.experiments._run_dir`); SIGINT and SIGTERM stop it with the partial
folder marked ``INCOMPLETE`` (exit 130 and 143), and rerunning the same command resumes it.

Example:
    $ stepwise-ntk linear --out runs/linear          # the paper's linear-model staircase
    $ stepwise-ntk linear --n-pairs 200 --d 4 --out runs/small
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stepwise_ntk.experiments._settings import (
    add_settings_arguments,
    load_config_file,
    resolve_settings,
    settings_to_dict,
)

__all__ = ["main", "prepare", "Invocation", "UsageError", "SUBCOMMANDS"]

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

_IMAGE_SIDE = 32  # CIFAR-10 images are 32×32×3


class UsageError(Exception):
    """Bad input found by :func:`prepare`: ``prog`` (e.g. ``stepwise-ntk linear``) and a one-line message."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog
        self.message = " ".join(str(message).split())


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: ...``) raised as :class:`UsageError`."""

    def error(self, message: str):
        raise UsageError(self.prog, f"{message}; see {self.prog} --help.")


def _load(name: str):
    module_name, settings_name, run_name, _ = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, settings_name), getattr(module, run_name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stepwise-ntk",
        description="Kernel (NTK) theory of stepwise self-supervised learning: experiments with plots.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, (_, _, _, description) in SUBCOMMANDS.items():
        settings_cls, _ = _load(name)
        p = sub.add_parser(name, help=description, description=description)
        p.add_argument("--out", default=f"runs/{name}", help=f"output folder (default: runs/{name}); the run "
                       "is written to OUT.partial and moved to OUT when it has finished")
        p.add_argument("--config", default=None, help="a .json or .toml file of settings; flags override it")
        p.add_argument("--overwrite", action="store_true",
                       help="replace a finished run in --out once this one has finished (and discard a partial "
                            "run of other settings in OUT.partial)")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
        add_settings_arguments(p, settings_cls)
    return parser


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What :func:`prepare` checked: the subcommand, its settings and where it writes."""

    command: str
    settings: Any
    out: Path
    overwrite: bool
    progress: bool
    provenance: dict[str, Any]  # the resolved data folder and where it came from


def _data_folder(settings: Any) -> dict[str, Any]:
    """The data folder this run reads (``--data-dir``, else ``$STEPWISE_NTK_DATA``, else the cache)."""
    from stepwise_ntk.data import DATA_ENV_VAR, resolve_cifar10_dir

    given = getattr(settings, "data_dir", None)
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if given is not None:
        name, base, source = "--data-dir", given, "--data-dir"
        if not given.strip():
            raise ValueError("--data-dir must name a folder, got ''; or leave it out to use $STEPWISE_NTK_DATA.")
    elif env:
        name, base, source = f"${DATA_ENV_VAR}", env, f"${DATA_ENV_VAR}"
    else:
        name, base, source = "the data cache", None, "default cache"
    if base is not None:
        p = Path(base).expanduser()
        if p.exists() and not p.is_dir():
            raise ValueError(f"{name} {p} is a file; it must be the folder that holds cifar-10-batches-py/.")
    folder = resolve_cifar10_dir(given)
    return {"data_folder": str(folder), "data_folder_from": source}


def _check_combinations(settings: Any, data: dict[str, Any]) -> None:
    """The checks no single field can make: image size, architecture, image counts."""
    ds = getattr(settings, "downsample", 1)
    if _IMAGE_SIDE % ds:
        raise ValueError(f"--downsample must divide the image side {_IMAGE_SIDE} (1, 2, 4, 8, 16, 32), got {ds}.")
    shape = (_IMAGE_SIDE // ds, _IMAGE_SIDE // ds, 3)
    arch = None
    if hasattr(settings, "architecture"):
        arch = settings.architecture()
    elif hasattr(settings, "base_architecture"):
        widths = getattr(settings, "widths", None)
        arch = settings.base_architecture(widths[0] if widths else getattr(settings, "width", 1))
    if arch is not None:
        try:
            arch.check_input_shape(shape)
        except ValueError as err:
            raise ValueError(f"--arch {settings.arch} with --downsample {ds} ({shape[0]}×{shape[1]} images): {err}") \
                from None
    d, n = getattr(settings, "d", None), getattr(settings, "n_pairs", None)
    if isinstance(d, int) and isinstance(n, int) and d > n:
        # Z (the pair swap) has n positive eigenvalues, so Lᵀ Z L has at most n (Sylvester).
        raise ValueError(f"--d must be at most --n-pairs = {n}: d = {d} embedding dimensions need {d} positive "
                         f"contrastive eigenvalues, and at most n = {n} are positive; lower --d or raise --n-pairs.")
    pool = getattr(settings, "gallery_pool", None)
    if pool is not None:
        from stepwise_ntk.experiments._plots import plot_mode_gallery

        n_show = inspect.signature(plot_mode_gallery).parameters["n_show"].default
        if pool < n_show:
            raise ValueError(f"--gallery-pool must be at least the {n_show} images shown per mode, got {pool}.")
    folder = Path(data["data_folder"])
    if not (folder / "data_batch_1").exists() and not (folder / "test_batch").exists():
        return  # not there yet: the run downloads it (and says so if it cannot)
    from stepwise_ntk.data import load_cifar10

    split = getattr(settings, "split", "train")
    counts = {"train": None, "test": None}

    def count(which: str) -> int:
        if counts[which] is None:
            counts[which] = len(load_cifar10(which, str(folder)))
        return counts[which]

    other = "test" if split == "train" else "train"
    # Image counts drawn from each split: the run's own (n_pairs, n_test) and, for
    # `precondition`, its network part's (net_pairs, net_test, net_probe_images).
    fields = [("n_pairs", split), ("n_test", other)]
    if getattr(settings, "net_losses", None):  # the network part runs
        fields += [("net_pairs", split), ("net_test", other), ("net_probe_images", split)]
    for field, which in fields:
        value = getattr(settings, field, None)
        if isinstance(value, int) and value > count(which):
            flag_ = "--" + field.replace("_", "-")
            raise ValueError(f"{flag_} must be at most the {count(which)} images of the {which} split in {folder}, "
                             f"got {value}.")


def prepare(argv: Sequence[str] | None = None) -> Invocation:
    """Parse and check everything (module docstring) without touching the output folder.

    Raises:
      UsageError: bad input; its ``prog`` and ``message`` make the one-line error.
      SystemExit: ``--help`` (status 0).
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    prog = f"stepwise-ntk {args.command}"
    if unknown:
        raise UsageError(prog, f"unrecognized arguments: {' '.join(unknown)}; see {prog} --help.")
    settings_cls, _ = _load(args.command)
    from stepwise_ntk.experiments._run_dir import check_output_path

    try:
        config = load_config_file(args.config) if args.config else {}
        settings = resolve_settings(settings_cls, args, config)
        data = _data_folder(settings) if hasattr(settings, "data_dir") else {}
        out = check_output_path(args.out, overwrite=args.overwrite)
        _check_combinations(settings, data)
    except (TypeError, ValueError, OSError) as err:
        raise UsageError(prog, str(err)) from None
    return Invocation(args.command, settings, out, args.overwrite, args.progress, data)


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stepwise-ntk`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0: the run finished (or ``--help``); 2: bad input or an explained failure (one line on
    stderr); 130 / 143: stopped by SIGINT / SIGTERM (``OUT.partial`` is marked INCOMPLETE and
    a rerun resumes it).
    """
    from stepwise_ntk.experiments._run_dir import (
        RunFailedError,
        RunInterrupted,
        partial_path,
        run_directory,
        stop_on_signals,
    )

    def stopped(err: KeyboardInterrupt) -> tuple[str, int]:
        name = err.signal_name if isinstance(err, RunInterrupted) else "SIGINT"
        return name, 128 + int(getattr(signal, name))

    # As the program (no argv given), a second Ctrl-C while it exits is ignored too.
    with stop_on_signals(ignore_after_stop=argv is None):
        try:
            inv = prepare(argv)
        except UsageError as err:
            return _error(err.prog, err.message)
        except SystemExit as exit_:  # --help
            return exit_.code if isinstance(exit_.code, int) else 0
        except KeyboardInterrupt as err:
            name, status = stopped(err)
            print(f"stepwise-ntk: stopped by {name} before the run started; nothing was written", file=sys.stderr)
            return status
        import jax

        # The experiments compare against float64 theory; an application may set this globally.
        jax.config.update("jax_enable_x64", True)
        _, run = _load(inv.command)
        prog = f"stepwise-ntk {inv.command}"
        try:
            with run_directory(inv.out, inv.command, settings_to_dict(inv.settings), overwrite=inv.overwrite,
                               extra=inv.provenance, progress=inv.progress) as out:
                if out.resumed:
                    print(f"{prog}: resuming the interrupted run in {out.path}", file=sys.stderr)
                summary = run(inv.settings, out, progress=inv.progress)
        except (ValueError, FileNotFoundError, RunFailedError) as err:
            return _error(prog, err)
        except KeyboardInterrupt as err:
            name, status = stopped(err)
            where = partial_path(inv.out)
            what = (f"{where} is marked INCOMPLETE (rerun to resume)" if where.exists()
                    else "nothing was written")
            print(f"{prog}: stopped by {name}; {what}, {inv.out} is unchanged", file=sys.stderr)
            return status
    print(f"{prog}: wrote {inv.out}")
    if summary:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
