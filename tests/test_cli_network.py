"""`stepwise-ntk network` and `stepwise-ntk sweep`: outputs checked against the library, one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stepwise_ntk.data import cifar10_pairs
from stepwise_ntk.experiments import NetworkSettings, cli
from stepwise_ntk.experiments._kernel_model import load_problem_data
from stepwise_ntk.experiments._network import rise_times
from stepwise_ntk.losses import barlow_twins_loss
from stepwise_ntk.predictor import (
    crossing_times,
    init_network,
    network_kernel,
    plateau_losses,
    step_time_ratios,
    subspace_alignment,
)
from stepwise_ntk.theory import contrastive_eigensystem, final_embeddings, step_times

# Tiny network run: 40 pairs of 8x8 images, width 128, d = 3.
NET = dict(n_pairs=40, n_test=20, d=3, width=128, gallery_pool=50, gallery_modes=2, n_records=60, n_times=80)
NET_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in NET.items()]
PC_EPS = 0.02
# Tiny sweep: 12 pairs of 4x4 images (as tests/test_sweep.py), widths 16 and 64, d = 2.
SWEEP_FLAGS = ["--n-pairs", "12", "--n-test", "6", "--downsample", "8", "--d", "2", "--widths", "16", "64",
               "--step-size", "0.03", "--n-records", "40"]


@pytest.fixture(scope="module")
def network_run(tmp_path_factory, cifar_dir):
    out = tmp_path_factory.mktemp("network")
    # With --precondition: the plain part is checked against the library below regardless, and
    # the preconditioned part adds one short training from the same initialisation.
    assert cli.main(["network", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *NET_FLAGS,
                     "--precondition", "--eps", str(PC_EPS)]) == 0
    return out


def test_network_writes_every_output(network_run):
    names = {p.name for p in network_run.iterdir()}
    assert {"config.json", "results.json", "arrays.npz", "staircase.png", "projections.png", "modes.png"} <= names
    assert "INCOMPLETE" not in names
    results = json.loads((network_run / "results.json").read_text())
    assert results["status"] == "complete" and results["d"] == 3 and results["architecture"]["width"] == 128
    assert results["loss"] == "barlow_twins" and results["kernel"] == "analytic"


def test_network_numbers_match_the_library(network_run, cifar_dir):
    r = json.loads((network_run / "results.json").read_text())
    a = np.load(network_run / "arrays.npz")
    s = NetworkSettings(**NET, data_dir=str(cifar_dir))
    # Second route: the same views, initial network and analytic NTK from the library.
    problem = load_problem_data(s)
    views = np.asarray(problem.views)
    arch = s.base_architecture(128).replace(d=3)
    init = init_network(arch, views.astype(np.float32), alpha=s.alpha, key=problem.key_init)
    # float32 network outputs. The CLI evaluates the views together with the test views, so
    # XLA blocks the float32 products differently: equal up to float32 rounding of sums over
    # 192 inputs and 128 hidden units, i.e. relative to the outputs' scale (a wrong network,
    # key or alpha differs at O(1) of it).
    F0_ref = np.asarray(init.F0, np.float64)
    np.testing.assert_allclose(a["F0"], F0_ref, rtol=0, atol=1e-5 * np.abs(F0_ref).max())
    theta = network_kernel(arch, views).K
    es = contrastive_eigensystem(jnp.asarray(s.alpha**2 * theta), s.n_pairs)
    predicted = np.sort(np.asarray(step_times(es, jnp.asarray(a["F0"]))))
    np.testing.assert_allclose(r["predicted_step_times"], predicted, rtol=1e-8)  # float64 eigensolves
    # The closed-form held-out embeddings: the Nyström extension to the test-split views.
    test_views, _, _ = cifar10_pairs(jax.random.fold_in(jax.random.PRNGKey(0), 1), 20, split="test",
                                     data_dir=str(cifar_dir), settings=s.augment(), downsample=4, dtype=jnp.float64)
    K_test = s.alpha**2 * network_kernel(arch, views, np.asarray(test_views)).K_test  # (m, 2n)
    np.testing.assert_allclose(a["closed_form_test_embeddings"],
                               np.asarray(final_embeddings(es, jnp.asarray(K_test), 3)), rtol=1e-8, atol=1e-10)
    # Reported numbers are the metrics of the saved arrays.
    assert r["test_alignment"] == pytest.approx(
        float(subspace_alignment(a["test_embeddings"], a["closed_form_test_embeddings"])), rel=1e-12)
    t, lam = a["network_times"], a["network_eigenvalues"]
    np.testing.assert_allclose(r["network_step_times"], crossing_times(t[t > 0], lam[t > 0]), rtol=1e-12)
    np.testing.assert_allclose(
        r["step_time_ratio"], step_time_ratios(t, lam, a["theory_times"], a["theory_eigenvalues"]), rtol=1e-12)
    rel = np.abs(np.asarray(r["network_step_times"]) - predicted) / predicted
    np.testing.assert_allclose(r["step_time_relative_error"], rel, rtol=1e-8)
    np.testing.assert_allclose(r["plateau_loss"], plateau_losses(t[t > 0], a["network_loss"][t > 0], predicted),
                               rtol=1e-8)
    # The last record is the final network: its loss is the loss of the final embeddings
    # (float32 network; the loss is near 0, so compare absolutely).
    assert r["final_loss"] == pytest.approx(float(barlow_twins_loss(jnp.asarray(a["train_embeddings"]))), abs=1e-5)
    # The run learned all d modes: C ≈ I on the training views (gradient descent to a minimum).
    np.testing.assert_allclose(r["final_eigenvalues"], 1.0, atol=1e-3)


def test_rise_times_cross_one_half_whatever_the_run_length():
    t = np.geomspace(0.1, 100, 400)
    lam = 1 / (1 + np.exp(-8 * 0.5 * (t[:, None] - [[3.0, 20.0]])))  # logistic steps at 3 and 20
    np.testing.assert_allclose(rise_times(t, lam), [3.0, 20.0], rtol=2e-3)
    # A longer run, with curves that go on growing after their step (SimCLR), leaves the
    # step times where they were: the level is 1/2, not a fraction of the last value.
    t_long = np.geomspace(0.1, 1000, 520)
    lam_long = 1 / (1 + np.exp(-8 * 0.5 * (t_long[:, None] - [[3.0, 20.0]]))) * (1 + np.log1p(t_long[:, None] / 50))
    np.testing.assert_allclose(rise_times(t_long, lam_long), rise_times(t_long[:400], lam_long[:400]), rtol=0)
    np.testing.assert_allclose(rise_times(t_long, lam_long), [3.0, 20.0], rtol=5e-2)
    # A mode that never passes 1/2 has no step time; records at t = 0 are ignored (log axis).
    assert np.isnan(rise_times(t, 0.4 * lam)).all()
    t0 = np.concatenate([[0.0], t])
    np.testing.assert_allclose(rise_times(t0, np.vstack([lam[:1], lam])), [3.0, 20.0], rtol=2e-3)


# Both losses take the same planning code (a kernel flow without closed form); SimCLR's
# 2n × 2n softmax makes its run the slower one.
@pytest.mark.parametrize("loss", [pytest.param("simclr", marks=pytest.mark.slow), "vicreg"])
def test_plan_of_a_loss_without_closed_form_does_not_depend_on_the_step_limit(cifar_dir, loss):
    from stepwise_ntk.experiments._network import LOSS_SETTINGS, network_problem, network_views, plan_run
    from stepwise_ntk.solver import solve

    kw = dict(arch="mlp", n_pairs=10, n_test=4, width=32, d=2, downsample=8, data_dir=str(cifar_dir))
    s = NetworkSettings(**kw)
    views, labels = network_views(s)
    p = network_problem(s, views, labels, s.width, loss=loss)
    steps, t_last = plan_run(p.arch, p, p.init, p.kernel, s, loss)
    # Four times the limit integrates the flow four times longer: the step times, and so the
    # plan, stay where they were (only the log grid's resolution differs).
    s4 = NetworkSettings(**kw, max_steps=4 * s.max_steps)
    steps4, t_last4 = plan_run(p.arch, p, p.init, p.kernel, s4, loss)
    assert t_last4 == pytest.approx(t_last, rel=0.03) and steps4 == pytest.approx(steps, rel=0.03)
    # Second route: the last crossing of 1/2 on a direct solve of both kernels' flows.
    lr = p.step_size / s.alpha**2
    grid = np.geomspace(lr, 2 * t_last, 400)
    last = max(
        float(np.max(crossing_times(grid, np.asarray(solve(
            s.alpha**2 * jnp.asarray(k.K), s.n_pairs, jnp.asarray(p.init.F0, jnp.float64), grid, loss=loss,
            loss_kwargs=LOSS_SETTINGS[loss] or None, method="function").eigenvalues))))
        for k in (p.kernel, p.init_kernel))
    assert t_last == pytest.approx(last, rel=0.03) and steps == int(np.ceil(s.horizon * t_last / lr))
    # A limit below the flow's last step is refused with the remedy, before any training.
    with pytest.raises(ValueError, match="raise --max-steps"):
        plan_run(p.arch, p, p.init, p.kernel, NetworkSettings(**kw, max_steps=max(steps // 4, 1)), loss)


def test_sweep_numbers_match_the_library(tmp_path, cifar_dir):
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *SWEEP_FLAGS]) == 0
    assert ({"results.json", "arrays.npz", "width_sweep.png", "curves.png", "config.json"}
            <= {p.name for p in out.iterdir()})
    r = json.loads((out / "results.json").read_text())
    a = np.load(out / "arrays.npz")
    assert r["status"] == "complete" and [run["width"] for run in r["runs"]] == [16, 64] and r["d"] == 2
    summary = r["summary"]["analytic"]
    for i, w in enumerate((16, 64)):
        # Alignment and step-time ratios are the metrics of the saved embeddings and curves.
        assert summary["test_alignment"][i] == pytest.approx(
            float(subspace_alignment(a["test_embeddings"][i], a["closed_form_test_embeddings"][i])), rel=1e-12)
        ratios = step_time_ratios(a[f"network_times_w{w}"], a[f"network_eigenvalues_w{w}"], a["theory_times"][i],
                                  a["theory_eigenvalues"][i])
        np.testing.assert_allclose(summary["step_time_ratios"][i], ratios, rtol=1e-12)
        np.testing.assert_allclose(a["step_time_ratios"][i], ratios, rtol=1e-12)
        # The run is horizon × the planned last step long, in steps of the configured size.
        run = r["runs"][i]
        assert run["steps"] == int(np.ceil(2.0 * run["predicted_last_step"] / run["learning_rate"]))
        assert run["learning_rate"] == pytest.approx(0.03 / 0.05**2)
    # The closed-form modes do not depend on the width (the analytic NTK in the "ntk"
    # parameterisation is width-independent): a property a mixed-up kernel would break.
    np.testing.assert_allclose(a["closed_form_test_embeddings"][0], a["closed_form_test_embeddings"][1], atol=1e-10)


def _error(capsys, argv):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["sweep", "--widths", "64", "16"], "increasing order"),
        (["sweep", "--kernels", "bogus"], "kernels must be one of"),
        (["network", "--horizon", "0.5"], "--horizon must be a finite number ≥ 1"),
        (["network", "--arch-options", "depth"], "key=value"),
        (["network", "--n-pairs", "10", "--d", "50", "--downsample", "8"], "d = 50 embedding dimensions"),
        (["network", "--n-pairs", "10", "--downsample", "8", "--arch-options", "width=3"], "may not set 'width'"),
        (["network", "--n-pairs", "10", "--downsample", "8", "--arch-options", "bogus=1"], "bogus"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, cifar_dir, argv, needle):
    cmd = argv[0]
    rc, err = _error(capsys, [*argv, "--out", str(tmp_path / "o"), "--data-dir", str(cifar_dir), "--no-progress"])
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"stepwise-ntk {cmd}: error: ")
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_unknown_architecture_or_loss_is_rejected_by_the_parser(tmp_path, capsys):
    for flag, value in (("--arch", "transformer"), ("--loss", "byol")):
        assert cli.main(["network", flag, value, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and err.startswith("stepwise-ntk network: error: ")
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_network_with_vicreg_uses_that_loss_on_both_sides(tmp_path, cifar_dir):
    from stepwise_ntk.experiments._network import LOSS_SETTINGS
    from stepwise_ntk.losses import vicreg_loss

    out = tmp_path / "vicreg"
    flags = ["--loss", "vicreg", "--n-pairs", "24", "--n-test", "12", "--d", "3", "--width", "128",
             "--gallery-pool", "30", "--gallery-modes", "2", "--n-records", "60", "--n-times", "60"]
    assert cli.main(["network", "--out", str(out), "--data-dir", str(cifar_dir), "--no-progress", *flags]) == 0
    r = json.loads((out / "results.json").read_text())
    a = np.load(out / "arrays.npz")
    # Independent route: the VICReg loss (with the settings the CLI documents) of the saved
    # initial embeddings is the network's loss at step 0 (float32 network).
    loss0 = float(vicreg_loss(jnp.asarray(a["F0"]), **LOSS_SETTINGS["vicreg"]))
    assert a["network_loss"][0] == pytest.approx(loss0, rel=1e-5)
    # The theory is a gradient flow of the same loss: it starts (at t = lr, one step in) just
    # below loss0 (the Barlow Twins loss there would be about d = 3, VICReg's about 24) and
    # never increases (dL/dt = -<∇L, K ∇L> <= 0; 1e-9 relative slack for the integrator).
    th = a["theory_loss"]
    assert 0.9 * loss0 <= th[0] <= loss0
    assert np.all(np.diff(th) <= 1e-9 * loss0)
    # Without a closed form, steps are the crossings of 1/2, on both sides.
    np.testing.assert_allclose(r["theory_step_times"], rise_times(a["theory_times"], a["theory_eigenvalues"]),
                               rtol=1e-12)
    np.testing.assert_allclose(r["network_step_times"], rise_times(a["network_times"], a["network_eigenvalues"]),
                               rtol=1e-12)
    assert r["step_time_relative_error"] is None and r["plateau_loss"] is None


def test_network_precondition_is_the_preconditioned_training_and_flow(network_run, cifar_dir):
    from stepwise_ntk.experiments._precondition import steps_to_pass
    from stepwise_ntk.solver import solve_preconditioned
    from stepwise_ntk.theory import Preconditioner, preconditioned_step_times
    from stepwise_ntk.training import TrainSettings, preconditioned_loss, train

    r = json.loads((network_run / "results.json").read_text())
    pc, a = r["precondition"], np.load(network_run / "arrays.npz")
    assert (network_run / "precondition.png").stat().st_size > 0
    assert pc["preconditioner"] == "(C+0.02I)^-1" and pc["step_size_tries"][0]["diverged_at"] is None
    # The first try is kept because it follows its flow: its loss ends below where it began and
    # its overshoot is within the limit, which is twice the preconditioned kernel flow's own
    # (at least 2).
    from stepwise_ntk.experiments._precondition import OVERSHOOT_LIMIT

    first = pc["step_size_tries"][0]
    assert first["overshoot_limit"] >= OVERSHOOT_LIMIT and first["overshoot"] <= first["overshoot_limit"]
    assert first["loss_rose"] is False
    assert pc["step_size"] == pytest.approx(r["step_size"], rel=1e-12)
    # Second route: the same network from the same views and key, trained by the library with
    # the preconditioned loss. Same float32 program, so equal to float32 rounding of C.
    s = NetworkSettings(**NET, data_dir=str(cifar_dir))
    problem = load_problem_data(s)
    views = np.asarray(problem.views)
    arch = s.base_architecture(128).replace(d=3)
    init = init_network(arch, views.astype(np.float32), alpha=s.alpha, key=problem.key_init)
    precond = Preconditioner("inverse", eps=PC_EPS)
    cfg = TrainSettings(loss=preconditioned_loss("barlow_twins", precond), learning_rate=r["learning_rate"],
                        steps=pc["steps"], alpha=s.alpha, n_records=NET["n_records"], record_embeddings=True)
    res = train(arch, cfg, views.astype(np.float32), init_params=init.params, progress=False)
    np.testing.assert_array_equal(a["precondition_steps"], res.steps)
    np.testing.assert_allclose(a["precondition_eigenvalues"], res.eigenvalues, atol=2e-4)
    # The step counts are the crossings of the saved curves.
    np.testing.assert_allclose(pc["steps_to_pass_preconditioned"],
                               steps_to_pass(a["precondition_steps"], a["precondition_eigenvalues"], np.ones(3)),
                               rtol=1e-12)
    # The kernel flow: the preconditioned solver on K = α² Θ from the network's F0, and its
    # aligned closed form (small init: the step times agree to a few percent, as in the
    # linear kernel model; a wrong ε or a plain flow is off by a factor of several).
    theta = network_kernel(arch, views).K
    K = jnp.asarray(s.alpha**2 * theta)
    t = a["precondition_theory_times"]
    flow = solve_preconditioned(K, s.n_pairs, jnp.asarray(a["F0"]), jnp.asarray(t), precond=precond)
    np.testing.assert_allclose(a["precondition_theory_eigenvalues"], flow.eigenvalues, rtol=1e-5, atol=1e-8)
    es = contrastive_eigensystem(K, s.n_pairs)
    closed = np.sort(np.asarray(preconditioned_step_times(es, jnp.asarray(a["F0"]), precond))) / r["learning_rate"]
    np.testing.assert_allclose(pc["theory_steps_to_pass_preconditioned"], closed, rtol=0.1)
    # What the preconditioner is for: every mode passes 1/2 in fewer gradient steps, in the
    # network and in its kernel model, and the run still reaches C = I.
    assert pc["step_speedup"] > 3 and pc["theory_step_speedup"] > 3
    assert np.all(np.asarray(pc["steps_to_pass_preconditioned"]) < np.asarray(pc["steps_to_pass_plain"]))
    np.testing.assert_allclose(pc["final_eigenvalues"], 1.0, atol=1e-3)
    assert pc["test_alignment_plain_vs_preconditioned"] == pytest.approx(float(subspace_alignment(
        a["test_embeddings"], a["precondition_test_embeddings"])), rel=1e-12)
    # The probe change is the difference of the two accuracies; its standard error comes
    # from the rows the two probes disagree on, so it is 0 exactly when they agree on all.
    change = 100 * (pc["probe_accuracy_preconditioned"] - pc["probe_accuracy_plain"])
    assert pc["probe_accuracy_change_points"] == pytest.approx(change, abs=1e-9)
    assert pc["probe_accuracy_change_se_points"] >= 0
    assert (pc["probe_accuracy_change_se_points"] == 0) <= (change == 0)
