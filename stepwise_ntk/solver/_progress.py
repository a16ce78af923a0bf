"""Progress of a time integration that runs inside compiled code, shown on the host.

An integration is one ``lax.while_loop``, so nothing returns to Python until it ends. Where a
caller asks for progress, :func:`~stepwise_ntk.solver._integrate.integrate` calls
:func:`report` through ``jax.debug.callback`` each time an accepted step passes output
times (once per step that fills some, so at most one host call per output time, not one per
step), and :func:`progress_bar` shows it as a tqdm bar over the output times: for the usual
log-spaced times, progress in log-time, which is how the stepwise dynamics unfold. The
callback is this module's function, the same object on every trace, so a solve with progress
compiles once and is reused; a solve without it compiles a program that has no callback.

Example:
    >>> import jax.numpy as jnp
    >>> from stepwise_ntk.solver._integrate import integrate
    >>> with progress_bar(2, "decay", enabled=False):
    ...     out = integrate(lambda t, y, a: -y, jnp.ones(1), jnp.array([0.5, 1.0]), observe=lambda y, a: y,
    ...                     report=report)
    >>> round(float(out.observed[-1, 0]), 4)
    0.3679
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "report"]

_ACTIVE: list[Any] = []  # the open bars, innermost last
_LOCK = threading.Lock()  # callbacks may run on a runtime thread


def report(filled: Any, t: Any) -> None:
    """Host side of the callback: ``filled`` output times reached, the integration at ``t``.
    Does nothing while no bar is open (an integration traced with ``report`` but run
    without :func:`progress_bar`)."""
    with _LOCK:
        bar = _ACTIVE[-1] if _ACTIVE else None
    if bar is not None:
        bar.update(int(filled) - bar.n)
        bar.set_postfix_str(f"t={float(t):.3g}", refresh=False)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar over ``total`` output times that :func:`report` advances while open (None
    and no bar where not ``enabled``). The caller blocks on the integration's results inside
    the ``with``, so that every callback of that run has reached this bar."""
    if not enabled:
        yield None
        return
    bar = tqdm(total=total, desc=desc, unit="time", leave=False)
    with _LOCK:
        _ACTIVE.append(bar)
    try:
        yield bar
    finally:
        with _LOCK:
            _ACTIVE.remove(bar)
        bar.close()
