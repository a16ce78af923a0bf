"""The adaptive integrators against closed forms (matrix exponential, logistic) and order checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from stepwise_ntk.solver import ODESettings, integrate
from stepwise_ntk.solver import _integrate as I


def _linear_problem(seed=0, stiff=False):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    eig = np.array([-1e3, -20.0, -1.0, -0.1]) if stiff else np.array([-2.0, -1.0, -0.5, 0.3])
    return Q @ np.diag(eig) @ Q.T


@pytest.mark.parametrize("method", ["dopri5", "rosw"])
def test_linear_ode_matches_expm_at_log_spaced_times(method):
    A = _linear_problem()
    y0 = np.ones(4)
    times = np.geomspace(1e-3, 5.0, 17)
    Aj = jnp.asarray(A)
    run = jax.jit(lambda y: integrate(
        lambda t, y, a: Aj @ y, y, jnp.asarray(times), observe=lambda y, a: y, method=method,
        w_prepare=lambda y, a: None, w_solve=lambda p, tau, b: jnp.linalg.solve(jnp.eye(4) - tau * Aj, b),
        settings=ODESettings(rtol=1e-10, atol=1e-14)))
    out = run(jnp.asarray(y0))
    ref = np.stack([scipy.linalg.expm(A * t) @ y0 for t in times])
    assert bool(out.stats.success)
    # Global error ~ 10-100 x rtol; dense output (order 4 / 3) between steps is as accurate.
    np.testing.assert_allclose(np.asarray(out.observed), ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(np.asarray(out.y_final), ref[-1], rtol=1e-7, atol=1e-9)


def _fixed_step_rosw(y0, h, n, rhs, W):
    solve = lambda p, tau, b: jnp.linalg.solve(jnp.eye(y0.shape[0]) - tau * W, b)  # noqa: E731
    y = y0
    for _ in range(n):
        y = I._rosw_step(rhs, solve, None, 0.0, y, rhs(0.0, y, None), h, None).y_new
    return y


@pytest.mark.parametrize("which", ["zero", "random", "jacobian"])
def test_rosw_is_third_order_for_any_W(which):
    # A W-method keeps its order whatever W is: the property the eigen route relies on
    # (its W is only the stiff part of the Jacobian).
    g = jnp.array([1.0, 0.3])
    y0 = jnp.array([0.01, 0.2])
    rhs = lambda t, y, a: 8 * g * y * (1 - y)  # noqa: E731
    exact = 1 / (1 + (1 / y0 - 1) * jnp.exp(-8 * g * 1.0))
    W = {"zero": jnp.zeros((2, 2)), "random": jnp.array([[-3.0, 1.0], [0.5, -7.0]]),
         "jacobian": jnp.diag(8 * g * (1 - 2 * y0))}[which]
    errs = [float(jnp.max(jnp.abs(_fixed_step_rosw(y0, 1.0 / n, n, rhs, W) - exact))) for n in (80, 160, 320)]
    order = np.log2(errs[1] / errs[2])
    # Asymptotic order 3 (an order-2 method would give ~2, order 4 ~4).
    assert 2.7 < order < 3.4, (errs, order)


def test_dense_output_orders_and_endpoints():
    g = jnp.array([1.0, 0.3])
    y0 = jnp.array([0.01, 0.2])
    rhs = lambda t, y, a: 8 * g * y * (1 - y)  # noqa: E731
    exact = lambda t: 1 / (1 + (1 / y0 - 1) * jnp.exp(-8 * g * t))  # noqa: E731
    f0 = rhs(0, y0, None)
    for step, dense, order in [(lambda h: I._rosw_step(rhs, lambda p, t, b: b, None, 0.0, y0, f0, h, None),
                                I._rosw_dense, 3),  # cubic Hermite
                               (lambda h: I._dopri5_step(rhs, None, 0.0, y0, rhs(0, y0, None), h, None),
                                I._dopri5_dense, 4)]:
        errs = []
        for h in (0.02, 0.01):
            st = step(h)
            errs.append(max(float(jnp.max(jnp.abs(dense(y0, h, st.dense, th) - exact(th * h))))
                            for th in (0.25, 0.5, 0.8)))
            # theta = 1 reproduces the step's solution (continuity of the extension).
            np.testing.assert_allclose(np.asarray(dense(y0, h, st.dense, 1.0)), np.asarray(st.y_new), rtol=1e-13)
        # Local error of an order-p continuous extension is O(h^(p+1)).
        assert np.log2(errs[0] / errs[1]) > order + 0.5


def test_rosw_error_estimate_is_filtered_on_stiff_components():
    # y' = −λy far beyond the stiff scale (hλ = 1e5, W = J): the L-stable method damps y to
    # ~|R(∞)| = 0 (true local error ~3e-5 |y|), but the embedded solution is not L-stable and
    # the raw difference of the two is ≈ 0.48 |y|; the step-size control sees the filtered
    # (I − τW)⁻¹ of it.
    lam, h = 1e4, 10.0
    y0 = jnp.ones(1)
    st = I._rosw_step(lambda t, y, a: -lam * y, lambda p, tau, b: b / (1.0 + tau * lam), None, 0.0, y0,
                      -lam * y0, h, None)
    true_err = abs(float(st.y_new[0]) - np.exp(-lam * h))
    assert 0.0 < true_err < 1e-4
    assert abs(float(st.err[0])) < 1e-3
    assert abs(float(st.err[0])) * (1.0 + I._RW_GAMMA * h * lam) > 0.4  # the unfiltered estimate


def test_stiff_problem_rosw_needs_far_fewer_steps():
    A = _linear_problem(1, stiff=True)
    Aj = jnp.asarray(A)
    times = jnp.array([0.1, 1.0, 10.0])
    kw = dict(observe=lambda y, a: y, settings=ODESettings(rtol=1e-6, atol=1e-12),
              w_prepare=lambda y, a: None, w_solve=lambda p, tau, b: jnp.linalg.solve(jnp.eye(4) - tau * Aj, b))
    out = {m: jax.jit(lambda y, m=m: integrate(lambda t, y, a: Aj @ y, y, times, method=m, **kw))(jnp.ones(4))
           for m in ("dopri5", "rosw")}
    ref = np.stack([scipy.linalg.expm(A * float(t)) @ np.ones(4) for t in times])
    np.testing.assert_allclose(np.asarray(out["rosw"].observed), ref, rtol=1e-4, atol=1e-8)
    # An explicit method run at its stability limit has unreliable error estimates (the
    # step size oscillates about the limit), so its global error is well above rtol.
    np.testing.assert_allclose(np.asarray(out["dopri5"].observed), ref, rtol=3e-3, atol=1e-6)
    # Explicit stability needs h < 3.3/1000 -> >= 3000 steps over [0, 10]; the W-method with
    # the exact Jacobian is L-stable and is limited by accuracy only.
    assert int(out["dopri5"].stats.n_steps) > 2500
    assert int(out["rosw"].stats.n_steps) < int(out["dopri5"].stats.n_steps) / 5


def test_rosw_prepares_w_at_the_start_and_after_rejections_only():
    # W = the stiff part of the Jacobian, min(J, 0): zero at the start (nothing learned),
    # −8γ once a component saturates. Kept over accepted steps, it must be renewed when the
    # stiffness appears, or the steps fall to the explicit stability limit 3.3 / (8 γ_1).
    g = jnp.array([1000.0, 1.0])
    lam0 = np.full(2, 1e-6)
    times = np.geomspace(1e-3, 10.0, 30)
    out = jax.jit(lambda y: integrate(
        lambda t, y, a: 8 * g * y * (1 - y), y, jnp.asarray(times), observe=lambda y, a: y, method="rosw",
        w_prepare=lambda y, a: jnp.minimum(8 * g * (1 - 2 * y), 0.0), w_solve=lambda p, tau, b: b / (1 - tau * p),
        settings=ODESettings(rtol=1e-6)))(jnp.asarray(lam0))
    st = out.stats
    exact = 1 / (1 + (1 / lam0 - 1) * np.exp(-8 * np.asarray(g) * times[:, None]))
    np.testing.assert_allclose(np.asarray(out.observed), exact, atol=3e-5)
    assert 2 <= int(st.n_w) <= 1 + int(st.n_rejected), st
    assert int(st.n_steps) < 8 * 1000.0 * 10.0 / 3.3 / 5, st
    dopri = integrate(lambda t, y, a: -y, jnp.ones(2), jnp.array([1.0]), observe=lambda y, a: y)
    assert int(dopri.stats.n_w) == 0


def test_float32_logistic_against_float64_closed_form():
    g = np.array([1.0, 0.4, 0.1])
    lam0 = np.array([1e-4, 1e-3, 1e-2])
    times = np.geomspace(1e-2, 30.0, 40)
    out = jax.jit(lambda y: integrate(lambda t, y, a: 8 * jnp.asarray(g, jnp.float32) * y * (1 - y), y,
                                      jnp.asarray(times, jnp.float32), observe=lambda y, a: y,
                                      settings=ODESettings(rtol=1e-5)))(jnp.asarray(lam0, jnp.float32))
    assert out.observed.dtype == jnp.float32
    exact = 1 / (1 + (1 / lam0 - 1) * np.exp(-8 * g * times[:, None]))
    # float32 with rtol 1e-5: relative error of a few 1e-4 through the exponential growth.
    np.testing.assert_allclose(np.asarray(out.observed, np.float64), exact, rtol=2e-3)


def test_times_at_zero_observe_the_initial_state_and_integral_is_trapezoid():
    out = jax.jit(lambda y: integrate(lambda t, y, a: -y, y, jnp.array([0.0, 0.0 + 1e-9, 2.0]),
                                      observe=lambda y, a: y, integrand=lambda y, a: y[0],
                                      settings=ODESettings(rtol=1e-9, atol=1e-14)))(jnp.ones(1))
    assert float(out.observed[0, 0]) == 1.0
    np.testing.assert_allclose(float(out.observed[2, 0]), np.exp(-2.0), rtol=1e-8)
    # Trapezoid on the accepted steps: O(h^2) error per step, small steps at rtol 1e-9.
    np.testing.assert_allclose(float(out.integral), 1 - np.exp(-2.0), rtol=1e-3)


def test_max_steps_reports_failure():
    out = jax.jit(lambda y: integrate(lambda t, y, a: -y, y, jnp.array([100.0]), observe=lambda y, a: y,
                                      settings=ODESettings(rtol=1e-10, max_steps=5)))(jnp.ones(1))
    assert not bool(out.stats.success)
    assert int(out.stats.n_steps + out.stats.n_rejected) == 5


def test_settings_validation():
    with pytest.raises(ValueError, match="rtol must be a finite number"):
        ODESettings(rtol=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        ODESettings(max_steps=0)
    with pytest.raises(ValueError, match="first_step"):
        ODESettings(first_step=0.0)
    with pytest.raises(ValueError, match="needs rtol > 0 or atol > 0"):
        ODESettings(rtol=0.0)
    with pytest.raises(TypeError, match="ODESettings.rtol must be a real number"):
        ODESettings(rtol="1e-6")
    with pytest.raises(TypeError, match="ODESettings.max_steps must be a positive integer"):
        ODESettings(max_steps=10.0)
    with pytest.raises(ValueError, match="method must be one of"):
        integrate(lambda t, y, a: y, jnp.ones(1), jnp.ones(1), observe=lambda y, a: y, method="euler")
    with pytest.raises(ValueError, match="needs w_prepare and w_solve"):
        integrate(lambda t, y, a: y, jnp.ones(1), jnp.ones(1), observe=lambda y, a: y, method="rosw")
