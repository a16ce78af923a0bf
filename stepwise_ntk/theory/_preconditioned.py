"""Spectral preconditioning of the embedding-space gradient, and its closed forms (docs/theory.md).

The preconditioned flow right-multiplies the embedding gradient by a function of the
cross-correlation, ``dF/dt = −K ∇_F L · P(C)`` with ``P(C) = p(C)`` (the scalar function
``p`` applied to the eigenvalues of the symmetric ``C``). In the contrastive eigenbasis of
Barlow Twins (``F = L P Mᵀ``) it is ``dM/dt = −4 p(C) (C − I) M Γ``, and for an aligned
initialisation each eigenvalue of ``C`` obeys

    dλ/dt = 8 γ λ (1 − λ) p(λ).

:class:`Preconditioner` is the family ``p(λ) = (max(λ, 0) + ε)^(−k)`` (``form="inverse"``:
``k = 1``; ``"power"``: ``k = power``; ``"none"``: ``p = 1``, the plain flow). With
``u = ln(λ / (1 − λ))`` (``dλ = λ (1 − λ) du``) the time to go from ``λ_0`` to ``λ`` is

    8 γ t = ∫_{u_0}^{u} (σ(s) + ε)^k ds,        σ(s) = 1/(1 + e^{−s}),

so for ``k = 1`` exactly ``8 γ t = ε ln(λ/λ_0) + (1 + ε) ln((1 − λ_0)/(1 − λ))`` and the step
time (``λ = 1/2``) is ``t_½ = [ε ln(1/(2λ_0)) + (1 + ε) ln(2 (1 − λ_0))]/(8γ)``
≈ ``(ε ln(1/λ_0) + ln 2)/(8γ)`` (plain: ``ln(1/λ_0 − 1)/(8γ)``). Other powers use a
128-point Gauss–Legendre rule on the smooth integrand.

*The invariant part.* ``Preconditioner(part="invariant")`` boosts only the pair mean of
the gradient, ``G̃ = Π₊ G P(C) + Π₋ G min(P(C), I)`` with ``Π± = (I ± Z)/2``
(:func:`preconditioned_gradient`): the part that moves both views of a pair alike. (The
pair difference still gets ``P`` where ``P < I``, in the learned directions ``λ > 1 − ε``:
left at ``I`` there, the difference part would push the mean part, through the kernel's
coupling of the two, against a restoring force that ``P`` weakens, and from a large ``C``
the flow runs away.) Where ``K`` commutes with ``Z``
(``K_aa = K_bb``, ``K_ab = K_ba``: a kernel symmetric in the two views, the limit of many
augmentations) every contrastive mode lies in one of the two parts, the growing ones
(``γ > 0``) in ``Π₊`` and the decaying ones (``γ < 0``) in ``Π₋``, so the growing modes
follow the law above and the decaying ones keep the plain flow, whose rates are what
limits gradient descent's step (:func:`preconditioned_stable_step`).

*The floor.* ``Preconditioner(floor=True)`` takes ``p(λ) = max((λ₊ + ε)^(−k), 1)``: it only
boosts. The directions past ``λ* = 1 − ε`` keep the plain rate (``(C₊ + εI)^(−k)`` would
slow them: SimCLR's eigenvalues keep growing past 1), so ``p(1) = 1`` and the fixed point's
step limit is the plain one; the integrand of ``8γt`` above becomes ``min((σ(s) + ε)^k, 1)``,
1 past ``u* = ln((1 − ε)/ε)``, and ``t_½`` is unchanged for ``ε ≤ 1/2``. With the invariant
part, ``min(P, I) = I``: ``G̃ = Π₊ G P(C) + Π₋ G``.

* :func:`precondition_factor` / :func:`precondition_matrix`: ``p(λ)`` and ``P(C)``.
* :func:`preconditioned_gradient`: ``G P(C)``, or ``Π₊ G P(C) + Π₋ G min(P(C), I)`` for the
  invariant part.
* :func:`preconditioned_time`: ``t(λ_0 → λ)`` above.
* :func:`preconditioned_step_times`: ``t_½`` per mode from ``F0`` (the analogue of
  :func:`stepwise_ntk.theory.step_times`).
* :func:`preconditioned_aligned_eigenvalues`: ``λ(t)`` (the inverse of ``t(λ)``, by
  bisection in ``u``; the analogue of :func:`stepwise_ntk.theory.aligned_eigenvalues`).
* :func:`preconditioned_stable_step`: the largest stable gradient-descent step of the kernel model
  under ``p`` (the fixed point ``C = I`` and the decaying modes while ``C ≈ 0``).

Example::

    >>> import jax.numpy as jnp
    >>> pc = Preconditioner(form="inverse", eps=1e-2)
    >>> g, lam0 = jnp.array([1.0]), jnp.array([1e-8])
    >>> plain = preconditioned_time(g, lam0, 0.5, Preconditioner(form="none"))
    >>> fast = preconditioned_time(g, lam0, 0.5, pc)
    >>> round(float(plain[0] / fast[0]), 1)        # ≈ ln(1/λ0) / (ε ln(1/λ0) + ln 2)
    21.0
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from stepwise_ntk._checks import check_choice, check_number, check_type, is_concrete
from stepwise_ntk.data import swap_pairs
from stepwise_ntk.theory._closed_form import initial_eigenvalues
from stepwise_ntk.theory._eigensystem import ContrastiveEigensystem

__all__ = [
    "PRECONDITIONED_PARTS",
    "PRECONDITIONERS",
    "Preconditioner",
    "precondition_factor",
    "precondition_matrix",
    "preconditioned_aligned_eigenvalues",
    "preconditioned_gradient",
    "preconditioned_step_times",
    "preconditioned_time",
    "preconditioned_stable_step",
]

PRECONDITIONERS = ("none", "inverse", "power")
PRECONDITIONED_PARTS = ("all", "invariant")
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(128)
_BISECTIONS = 200


@dataclasses.dataclass(frozen=True)
class Preconditioner:
    """The spectral preconditioner ``P(C) = (C₊ + ε I)^(−k)`` of the embedding gradient.

    ``C₊`` is ``C`` with its negative eigenvalues set to 0 (a symmetrised cross-correlation
    can dip below 0 at small initialisation), so ``P`` is bounded by ``ε^(−k)``.

    Attributes:
      form: ``"none"`` (``P = I``, the plain flow), ``"inverse"`` (``k = 1``) or
        ``"power"`` (``k = power``).
      eps: ``ε > 0``: the largest boost is ``ε^(−k)`` (small modes) and the flow near
        ``C = I`` is slowed by ``(1 + ε)^(−k)``.
      power: ``k > 0`` for ``form="power"`` (ignored otherwise).
      part: which part of the embedding gradient ``P`` multiplies: ``"all"`` of it, or
        ``"invariant"``, its pair mean (the pair difference gets ``min(P, I)``, never a
        boost; see the module docstring and :func:`preconditioned_gradient`).
      floor: floor ``P`` at ``I``, ``p(λ) = max((λ₊ + ε)^(−k), 1)``: boost the directions
        still to be learned and leave those past ``λ = 1 − ε`` at the plain rate, where
        ``(C₊ + εI)^(−k)`` would slow them (SimCLR's eigenvalues keep growing past 1). For
        ``ε ≥ 1`` nothing is boosted and the flow is the plain one.

    Example:
        >>> Preconditioner(form="inverse", eps=1e-2).exponent
        1.0
        >>> Preconditioner(form="cube")
        Traceback (most recent call last):
        ...
        ValueError: Preconditioner.form must be one of 'none', 'inverse', 'power'; got 'cube'.
    """

    form: str = "inverse"
    eps: float = 1e-2
    power: float = 1.0
    part: str = "all"
    floor: bool = False

    def __post_init__(self):
        check_choice("Preconditioner.form", self.form, PRECONDITIONERS)
        check_choice("Preconditioner.part", self.part, PRECONDITIONED_PARTS)
        check_number("Preconditioner.eps", self.eps, low=0.0, open_low=True,
                     hint=" (ε = 0 makes P unbounded at C = 0)")
        check_number("Preconditioner.power", self.power, low=0.0, open_low=True)
        check_type("Preconditioner.floor", self.floor, bool, "True or False")

    @property
    def exponent(self) -> float:
        """``k`` (0 for ``form="none"``)."""
        return {"none": 0.0, "inverse": 1.0, "power": float(self.power)}[self.form]

    def describe(self) -> str:
        """A short label, e.g. ``"(C+0.01I)^-1"`` (``"max(…, I)"`` when floored, ``" on the pair
        mean"`` added for the invariant part)."""
        if self.form == "none":
            return "none"
        label = f"(C+{self.eps:g}I)^-{self.exponent:g}"
        label = f"max({label}, I)" if self.floor else label
        return label if self.part == "all" else f"{label} on the pair mean"


def _check_pc(precond) -> Preconditioner:
    return check_type("precond", precond, Preconditioner, "a Preconditioner (e.g. Preconditioner('inverse', eps=1e-2))")


def precondition_factor(lam: jax.Array, precond: Preconditioner) -> jax.Array:
    """``p(λ) = (max(λ, 0) + ε)^(−k)`` elementwise (1 for ``form="none"``; at least 1 when
    ``precond.floor``)."""
    precond = _check_pc(precond)
    lam = jnp.asarray(lam)
    if precond.form == "none":
        return jnp.ones_like(lam)
    p = (jnp.maximum(lam, 0.0) + precond.eps) ** (-precond.exponent)
    return jnp.maximum(p, 1.0) if precond.floor else p


def precondition_matrix(C: jax.Array, precond: Preconditioner) -> jax.Array:
    """``P(C) = V diag(p(λ)) Vᵀ`` for symmetric ``C: (d, d) = V diag(λ) Vᵀ``; ``(d, d)``.

    Example:
        >>> import jax.numpy as jnp
        >>> C = jnp.diag(jnp.array([1.0, 0.0]))
        >>> precondition_matrix(C, Preconditioner(eps=1.0)).diagonal().tolist()
        [0.5, 1.0]
    """
    precond = _check_pc(precond)
    C = jnp.asarray(C)
    if precond.form == "none":
        return jnp.eye(C.shape[-1], dtype=C.dtype)
    lam, V = jnp.linalg.eigh((C + C.T) / 2)
    return (V * precondition_factor(lam, precond)) @ V.T


def preconditioned_gradient(G: jax.Array, C: jax.Array, precond: Preconditioner) -> jax.Array:
    """The preconditioned embedding gradient: ``G P(C)``, or for ``precond.part == "invariant"``

        Π₊ G P(C) + Π₋ G min(P(C), I)

    (``Π± = (I ± Z)/2``, ``Z`` swapping the views of each pair; ``min(P, I)`` applies
    ``min(p(λ), 1)`` to the eigenvalues of ``C``): the pair mean is preconditioned, the pair
    difference never boosted (see the module docstring).

    Args:
      G: ``(2n, d)`` gradient ``∇_F L`` in the pairing order.
      C: ``(d, d)`` cross-correlation ``Fᵀ Z F/(2n)`` of the same embeddings.
      precond: :class:`Preconditioner`.

    Returns:
      ``(2n, d)``.

    Example:
        >>> import jax.numpy as jnp
        >>> G = jnp.array([[1.0], [0.0]])                 # one pair, d = 1
        >>> pc = Preconditioner(eps=1.0, part="invariant")
        >>> preconditioned_gradient(G, jnp.zeros((1, 1)), pc).ravel().tolist()   # P(0) = 1/ε = 1
        [1.0, 0.0]
        >>> preconditioned_gradient(G, jnp.ones((1, 1)), pc).ravel().tolist()    # P(1) = 1/2
        [0.5, 0.0]
        >>> pc = Preconditioner(eps=0.5, part="invariant")                     # P(0) = 2
        >>> preconditioned_gradient(G, jnp.zeros((1, 1)), pc).ravel().tolist()
        [1.5, 0.5]
    """
    precond = _check_pc(precond)
    if precond.part == "all" or precond.form == "none":
        return G @ precondition_matrix(C, precond).astype(G.dtype)
    C = jnp.asarray(C)
    lam, V = jnp.linalg.eigh((C + C.T) / 2)
    p = precondition_factor(lam, precond)
    V = V.astype(G.dtype)
    mean = 0.5 * (G + swap_pairs(G))
    # Both parts in the eigenbasis of C, scaled there, and rotated back once.
    scaled = (mean @ V) * p.astype(G.dtype) + ((G - mean) @ V) * jnp.minimum(p, 1.0).astype(G.dtype)
    return scaled @ V.T


def _logit(lam):
    return jnp.log(lam) - jnp.log1p(-lam)


def _G(u0, u, precond: Preconditioner):
    """``∫_{u0}^{u} 1/p(σ(s)) ds`` elementwise (``= 8γ t``): ``(σ(s) + ε)^k``, and with the floor
    ``min((σ(s) + ε)^k, 1)``, which is 1 past ``u* = logit(1 − ε)``; the integral is split there."""
    k, eps = precond.exponent, precond.eps
    if k == 0.0 or (precond.floor and eps >= 1.0):
        return u - u0
    if precond.floor:
        star = math.log(1.0 - eps) - math.log(eps)
        below = _G(jnp.minimum(u0, star), jnp.minimum(u, star), dataclasses.replace(precond, floor=False))
        return below + jnp.maximum(u, star) - jnp.maximum(u0, star)
    if k == 1.0:
        # softplus(u) − softplus(u0) + ε (u − u0): exact.
        return jax.nn.softplus(u) - jax.nn.softplus(u0) + eps * (u - u0)
    x = jnp.asarray(_GL_NODES, u.dtype)
    w = jnp.asarray(_GL_WEIGHTS, u.dtype)
    mid, half = (u + u0) / 2, (u - u0) / 2
    s = mid[..., None] + half[..., None] * x
    return half * jnp.sum(w * (jax.nn.sigmoid(s) + eps) ** k, axis=-1)


def _check_lam(lam0, name):
    if is_concrete(lam0) and not bool(jnp.all((lam0 > 0) & (lam0 < 1))):
        raise ValueError(f"{name} must lie in (0, 1) (a mode that can step), got {np.asarray(lam0)}.")


def preconditioned_time(gammas: jax.Array, lambda0: jax.Array, lam: jax.Array | float,
                        precond: Preconditioner) -> jax.Array:
    """Time for an aligned mode to go from ``λ_0`` to ``λ`` under ``dλ/dt = 8γλ(1−λ)p(λ)``.

    ``t = (1/8γ) ∫_{u_0}^{u} (σ(s) + ε)^k ds`` with ``u = ln(λ/(1 − λ))``; for ``k = 1``
    ``t = [ε ln(λ/λ_0) + (1 + ε) ln((1 − λ_0)/(1 − λ))]/(8γ)``, for ``"none"``
    ``t = [u − u_0]/(8γ)``.

    Args:
      gammas: ``(d,)`` contrastive eigenvalues (non-zero; negative: decaying modes, then
        ``λ < λ_0`` gives a positive time).
      lambda0: ``(d,)`` initial eigenvalues in ``(0, 1)``.
      lam: target eigenvalue(s) in ``(0, 1)``, broadcast against ``(d,)``.
      precond: :class:`Preconditioner`.

    Returns:
      ``(d,)`` times (negative where the target is not reached going forward).
    """
    precond = _check_pc(precond)
    g, lam0 = jnp.asarray(gammas), jnp.asarray(lambda0)
    lam = jnp.broadcast_to(jnp.asarray(lam, lam0.dtype), lam0.shape)
    _check_lam(lam0, "lambda0")
    _check_lam(lam, "lam")
    return _G(_logit(lam0), _logit(lam), precond) / (8.0 * g)


def preconditioned_step_times(es: ContrastiveEigensystem, F0: jax.Array, precond: Preconditioner) -> jax.Array:
    """Step times ``t_½`` of the top ``d`` modes under the preconditioner, ``(d,)``.

    ``λ_j(0)`` = :func:`stepwise_ntk.theory.initial_eigenvalues` and ``t_½`` =
    :func:`preconditioned_time` to 1/2 (for ``form="none"`` this is
    :func:`stepwise_ntk.theory.step_times`).

    Example:
        >>> import jax
        >>> from stepwise_ntk.theory import contrastive_eigensystem, step_times
        >>> X = jax.random.normal(jax.random.key(0), (20, 5))
        >>> es = contrastive_eigensystem(X @ X.T, 10)
        >>> F0 = 1e-3 * X[:, :2]
        >>> bool((preconditioned_step_times(es, F0, Preconditioner()) < step_times(es, F0)).all())
        True
    """
    precond = _check_pc(precond)
    lam0 = initial_eigenvalues(es, F0)
    d = lam0.shape[0]
    return preconditioned_time(es.gammas[:d], lam0, 0.5, precond)


def preconditioned_aligned_eigenvalues(gammas: jax.Array, lambda0: jax.Array, times: jax.Array,
                                       precond: Preconditioner) -> jax.Array:
    """Aligned eigenvalue curves under the preconditioner, ``(T, d)`` (column ``j``: mode ``j``).

    Solves ``G(u_0, u) = 8 γ t`` for ``u = ln(λ/(1 − λ))`` by bisection (``G`` increases in
    ``u`` with slope between ``ε^k`` and ``(1 + ε)^k``, which brackets the root), then
    ``λ = σ(u)``. ``form="none"`` reproduces :func:`stepwise_ntk.theory.aligned_eigenvalues`.

    Args:
      gammas: ``(d,)`` contrastive eigenvalues.
      lambda0: ``(d,)`` initial eigenvalues in ``(0, 1)``.
      times: ``(T,)`` times ``≥ 0``.
      precond: :class:`Preconditioner`.
    """
    precond = _check_pc(precond)
    g, lam0, times = jnp.asarray(gammas), jnp.asarray(lambda0), jnp.asarray(times)
    if g.shape != lam0.shape or g.ndim != 1 or times.ndim != 1:
        raise ValueError(f"gammas, lambda0 must be (d,) and times (T,), got {g.shape}, {lam0.shape}, {times.shape}.")
    _check_lam(lam0, "lambda0")
    return _aligned(g, lam0, times, precond)


def _aligned(g, lam0, times, precond: Preconditioner):
    u0 = _logit(lam0)[None, :]
    tau = 8.0 * g[None, :] * times[:, None]
    k, eps = precond.exponent, precond.eps
    slope_lo, slope_hi = eps**k, (1.0 + eps) ** k
    if precond.floor:
        slope_lo, slope_hi = min(slope_lo, 1.0), min(slope_hi, 1.0)
    # G(u) − G(u0) = τ with slope in [slope_lo, slope_hi]: u − u0 lies between τ/slope_hi and τ/slope_lo.
    a, b = u0 + tau / slope_hi, u0 + tau / slope_lo
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    u0b = jnp.broadcast_to(u0, tau.shape)

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        above = _G(u0b, mid, precond) > tau
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, _BISECTIONS, body, (lo, hi))
    return jax.nn.sigmoid((lo + hi) / 2)


def preconditioned_stable_step(gammas: jax.Array, precond: Preconditioner) -> float:
    """Largest stable gradient-descent step ``c`` of the Barlow Twins kernel model under ``p``.

    Linearising ``M ← M − 4c p(C)(C − I) M Γ`` about the two states the run passes
    through gives two limits (docs/theory.md): at ``C = I`` the top mode needs
    ``4 c γ_1 p(1) < 1``; while a direction of ``C`` is still unlearned (``λ ≈ 0``) the
    decaying modes (``γ < 0``) shrink by ``1 − 4c|γ| p(0)`` per step, which needs
    ``4 c |γ_min| p(0) < 2``. So ``c_max = min(1/(4γ_1 p(1)), 1/(2|γ_min| p(0)))``
    (the second only when some ``γ < 0``). For the invariant part (``precond.part``) the
    decaying modes get ``min(p(0), 1)`` in place of ``p(0)``: exact where ``K`` commutes
    with the pair swap ``Z`` (see the module docstring).

    Args:
      gammas: ``(N,)`` all contrastive eigenvalues (descending).
      precond: :class:`Preconditioner`.

    Example:
        >>> import jax.numpy as jnp
        >>> g = jnp.array([1.0, 0.5, -0.01])
        >>> preconditioned_stable_step(g, Preconditioner("none"))
        0.25
        >>> preconditioned_stable_step(g, Preconditioner(eps=1e-3))    # 1/(2 |γ_min| p(0))
        0.05
    """
    precond = _check_pc(precond)
    g = np.asarray(gammas, np.float64)
    p1 = float(precondition_factor(jnp.asarray(1.0), precond))
    p0 = float(precondition_factor(jnp.asarray(0.0), precond))
    if precond.part == "invariant":
        p0 = min(p0, 1.0)
    limit = 1.0 / (4.0 * g.max() * p1)
    if g.min() < 0:
        limit = min(limit, 1.0 / (2.0 * abs(g.min()) * p0))
    return float(limit)
