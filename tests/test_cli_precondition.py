"""``stepwise-ntk precondition``: bad input is one line on stderr, exit 2, before any work."""

import json

import pytest

from stepwise_ntk.experiments import cli

BAD = [
    (["--eps", "0"], "--eps"),
    (["--form", "cube"], "--form"),
    (["--eps-sweep", "0.1", "-1"], "--eps-sweep"),
    (["--net-alphas", "0"], "--net-alphas"),
    (["--net-losses", "byol"], "--net-losses"),
    (["--net-arch-options", "depth=1,depth=2"], "--net-arch-options"),
    (["--kernel-part", "false"], "nothing to run"),
    (["--part", "invariant"], "--kernel-part false"),
    (["--part", "mean"], "--part"),
    (["--net-seeds", "0"], "--net-seeds"),
    (["--net-probe-images", "-1"], "--net-probe-images"),
    (["--floor", "maybe"], "--floor"),
    (["--kernel-part", "false", "--net-losses", "simclr", "--seed", "4294967295", "--net-seeds", "2"], "--net-seeds"),
]


@pytest.mark.parametrize("flags,needle", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_input_is_one_line(tmp_path, capsys, flags, needle):
    rc = cli.main(["precondition", "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("stepwise-ntk precondition: error: "), err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_preconditioner_forms_are_the_theorys():
    from stepwise_ntk.experiments._settings import PRECONDITIONER_FORMS, PRECONDITIONER_PARTS
    from stepwise_ntk.theory import PRECONDITIONED_PARTS, PRECONDITIONERS

    assert PRECONDITIONER_FORMS == PRECONDITIONERS
    assert PRECONDITIONER_PARTS == PRECONDITIONED_PARTS


def test_floor_flag_reaches_the_preconditioner(tmp_path):
    from stepwise_ntk.experiments.cli import prepare
    from stepwise_ntk.theory import Preconditioner

    s = prepare(["precondition", "--out", str(tmp_path / "p"), "--floor", "--eps", "0.1", "--kernel-part", "false",
                 "--net-losses", "simclr", "--part", "invariant"]).settings
    assert s.preconditioner() == Preconditioner("inverse", eps=0.1, part="invariant", floor=True)
    assert s.preconditioner(0.3).floor
    assert not prepare(["precondition", "--out", str(tmp_path / "q")]).settings.preconditioner().floor


def test_network_defaults_are_the_network_subcommands():
    from stepwise_ntk.experiments._network import ARCH_DEFAULTS
    from stepwise_ntk.experiments._precondition import PreconditionSettings

    for arch, a in ARCH_DEFAULTS.items():
        s = PreconditionSettings(net_arch=arch)
        assert (s.net_width, s.net_pairs, s.net_test, s.net_downsample, s.net_rate) == (
            a.width, a.n_pairs, a.n_test, a.downsample, a.rate)
        assert s.net_alphas == (a.alpha, 1.0)
        net = s.net_architecture()
        assert all(getattr(net, k) == v for k, v in a.options.items())
    assert PreconditionSettings(net_width=64).net_width == 64  # a flag still overrides


# ------------------------------------------------------------------ linear / kernel --precondition
# Slow (the solver's compilation: ~20 s for the overlay on a small random kernel, 15-25 s per
# tiny CLI run on 2 shared cores); the flag's parsing and the plain run's outputs without it
# (tests/test_cli.py) stay in the default suite.

TINY = ["--n-pairs", "30", "--d", "3", "--downsample", "4", "--n-times", "60", "--gallery-pool", "20",
        "--gallery-modes", "2", "--probe-modes", "4", "--probe-test", "40", "--no-progress"]


@pytest.mark.slow
def test_overlay_step_times_are_the_theorys(tmp_path):
    """The overlay on a small random kernel: closed form from the library, solver agrees, figure written."""
    import contextlib
    import types

    import jax
    import jax.numpy as jnp
    import numpy as np

    from stepwise_ntk.experiments import LinearSettings
    from stepwise_ntk.experiments._precondition import precondition_overlay
    from stepwise_ntk.solver import solve
    from stepwise_ntk.theory import (
        Preconditioner,
        aligned_eigenvalues,
        contrastive_eigensystem,
        initial_eigenvalues,
        preconditioned_step_times,
        step_times,
    )

    X = jax.random.normal(jax.random.PRNGKey(0), (24, 6), jnp.float64) / np.sqrt(6)
    K, n, d = X @ X.T, 12, 2
    F0 = 1e-3 * X[:, :d]
    es = contrastive_eigensystem(K, n)
    plain_t = step_times(es, F0)
    times = jnp.asarray(np.geomspace(float(plain_t.min()) / 100, 3 * float(plain_t.max()), 120))
    plain = solve(K, n, F0, times)
    theory = np.sort(np.asarray(aligned_eigenvalues(es.gammas[:d], initial_eigenvalues(es, F0), times)), axis=1)
    s = LinearSettings(n_pairs=n, d=d, precondition=True, eps=0.05)
    out = types.SimpleNamespace(path=tmp_path, phase=lambda _msg: contextlib.nullcontext())
    pc, arrays = precondition_overlay(s, out, es, K, F0, plain, times, theory[:, ::-1], title="test")
    closed = np.sort(np.asarray(preconditioned_step_times(es, F0, Preconditioner("inverse", eps=0.05))))
    np.testing.assert_allclose(pc["closed_form_step_times"], closed, rtol=1e-12)
    np.testing.assert_allclose(pc["simulated_step_times"], closed, rtol=0.05)
    assert pc["closed_form_time_speedup"] == pytest.approx(float(np.max(plain_t) / closed.max()), rel=1e-10)
    assert pc["time_speedup"] == pytest.approx(pc["closed_form_time_speedup"], rel=0.1) and pc["time_speedup"] > 2
    assert pc["final_alignment_with_plain"] > 0.999
    assert (tmp_path / "precondition.png").stat().st_size > 0
    assert arrays["precondition_eigenvalues"].shape == (times.shape[0], d)


def test_bare_bool_flag_means_true(tmp_path, cifar_dir):
    from stepwise_ntk.experiments.cli import prepare

    base = ["linear", "--out", str(tmp_path / "o"), "--data-dir", str(cifar_dir)]
    for flags, want in (((), False), (("--precondition",), True), (("--precondition", "false"), False),
                        (("--precondition", "--d", "3"), True)):
        assert prepare([*base, *flags]).settings.precondition is want, flags
    off = prepare(["precondition", "--out", str(tmp_path / "p"), "--kernel-part", "false", "--net-losses", "vicreg"])
    assert off.settings.kernel_part is False


@pytest.fixture(scope="module")
def linear_runs(tmp_path_factory, cifar_dir):
    root = tmp_path_factory.mktemp("linear_pc")
    runs = {}
    for name, extra in (("plain", []), ("pc", ["--precondition", "--eps", "0.05"])):
        runs[name] = root / name
        assert cli.main(["linear", "--out", str(runs[name]), "--data-dir", str(cifar_dir), *TINY, *extra]) == 0
    return runs


def _problem(cifar_dir):
    import jax
    import jax.numpy as jnp

    from stepwise_ntk.experiments import LinearSettings
    from stepwise_ntk.experiments._kernel_model import load_problem_data
    from stepwise_ntk.experiments._linear import flatten_scaled

    s = LinearSettings(n_pairs=30, d=3, downsample=4, data_dir=str(cifar_dir))
    problem = load_problem_data(s)
    X = flatten_scaled(problem.views)
    F0 = X @ (s.init_scale * jax.random.normal(problem.key_init, (3, X.shape[1]), jnp.float64)).T
    return X @ X.T, F0


@pytest.mark.slow
def test_linear_precondition_step_times_are_the_theorys(linear_runs, cifar_dir):
    import numpy as np

    from stepwise_ntk.theory import Preconditioner, contrastive_eigensystem, preconditioned_step_times, step_times

    run = linear_runs["pc"]
    assert (run / "precondition.png").stat().st_size > 0
    pc = json.loads((run / "results.json").read_text())["precondition"]
    assert pc["preconditioner"] == "(C+0.05I)^-1"
    # Second route: the closed form from the library on the same K and F0.
    K, F0 = _problem(cifar_dir)
    es = contrastive_eigensystem(K, 30)
    closed = np.sort(np.asarray(preconditioned_step_times(es, F0, Preconditioner("inverse", eps=0.05))))
    np.testing.assert_allclose(pc["closed_form_step_times"], closed, rtol=1e-10)
    # The solver's preconditioned crossings agree with the closed form (small init: aligned).
    np.testing.assert_allclose(pc["simulated_step_times"], closed, rtol=0.1)
    plain = np.sort(np.asarray(step_times(es, F0)))
    assert pc["closed_form_time_speedup"] == pytest.approx(plain.max() / closed.max(), rel=1e-10)
    assert pc["time_speedup"] == pytest.approx(pc["closed_form_time_speedup"], rel=0.15)
    assert pc["time_speedup"] > 1.5  # a preconditioner that does nothing would give 1
    # Both flows end at the same minimiser (the top-d kernel PCA subspace).
    assert pc["final_alignment_with_plain"] > 0.99


@pytest.mark.slow
def test_linear_plain_outputs_unchanged_without_the_flag(linear_runs):
    import numpy as np

    plain = json.loads((linear_runs["plain"] / "results.json").read_text())
    pc = json.loads((linear_runs["pc"] / "results.json").read_text())
    assert "precondition" not in plain and not (linear_runs["plain"] / "precondition.png").exists()
    assert json.loads((linear_runs["plain"] / "config.json").read_text())["settings"]["precondition"] is False
    pc.pop("precondition")
    for r in (plain, pc):
        r.pop("wall_time_s")
    assert plain == pc  # the plain run's numbers do not depend on the flag
    a, b = np.load(linear_runs["plain"] / "arrays.npz"), np.load(linear_runs["pc"] / "arrays.npz")
    assert set(b.files) - set(a.files) == {"precondition_times", "precondition_eigenvalues",
                                          "precondition_theory_eigenvalues", "precondition_loss"}
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_kernel_precondition_power_form(tmp_path, cifar_dir):
    out = tmp_path / "k"
    flags = ["--n-pairs", "30", "--d", "3", "--downsample", "4", "--gallery-pool", "20", "--n-times", "60",
             "--arch-options", "depth=1", "--no-progress", "--precondition", "true", "--form", "power",
             "--power", "0.5"]
    assert cli.main(["kernel", "--out", str(out), "--data-dir", str(cifar_dir), *flags]) == 0
    pc = json.loads((out / "results.json").read_text())["precondition"]
    assert pc["preconditioner"] == "(C+0.01I)^-0.5" and (out / "precondition.png").exists()
    assert (pc["form"], pc["power"], pc["part"], pc["floor"]) == ("power", 0.5, "all", False)
    assert pc["closed_form_time_speedup"] > 1 and pc["step_time_median_relative_error"] < 0.1


def test_step_search_doubles_to_the_limit_and_halves_below_an_unstable_start():
    from stepwise_ntk.experiments._precondition import _largest_stable

    def search(limit):
        return _largest_stable(lambda c: {"step_size": c, "stable": c <= limit}, 1.0, 5)

    up = search(5.0)  # 1, 2, 4 stable, 8 not
    assert up["chosen"]["step_size"] == 4.0 and [r["step_size"] for r in up["tried"]] == [1, 2, 4, 8]
    down = search(0.3)  # 1 unstable, then 0.5 unstable, 0.25 stable
    assert down["chosen"]["step_size"] == 0.25 and [r["step_size"] for r in down["tried"]] == [1, 0.5, 0.25]
    assert search(1e-6)["chosen"] is None and len(search(1e-6)["tried"]) == 6


@pytest.mark.slow  # a tiny network trained 16 times, two seeds (~1 min on 2 shared cores)
def test_network_part_reports_both_pass_criteria(tmp_path, cifar_dir):
    import numpy as np

    out = tmp_path / "net"
    flags = ["--kernel-part", "false", "--net-losses", "barlow_twins", "vicreg", "--net-alphas", "0.05",
             "--net-pairs", "16", "--net-test", "8", "--net-width", "64", "--net-d", "2", "--net-doublings", "2",
             "--net-max-steps", "60", "--net-seeds", "2", "--net-probe-images", "20", "--no-progress"]
    assert cli.main(["precondition", "--out", str(out), "--data-dir", str(cifar_dir), *flags]) == 0
    net = json.loads((out / "results.json").read_text())["networks"]
    assert net["seeds"] == [0, 1] and [r["seed"] for r in net["runs"]] == [0, 0, 1, 1]
    assert [p["seed"] for p in net["per_seed"]] == [0, 1] and len(net["summary"]) == 2
    assert all(p["probe_images"] == 20 for p in net["per_seed"])
    # Each seed is its own problem: other training images, so another kernel.
    assert net["per_seed"][0]["gamma_1"] != net["per_seed"][1]["gamma_1"]
    for row in net["summary"]:
        mine = [r for r in net["runs"] if r["loss"] == row["loss"]]
        assert row["step_speedup_half"] == [r["step_speedup_half_at_largest_stable"] for r in mine]
    runs = {r["loss"]: r for r in net["runs"] if r["seed"] == 0}
    # Barlow Twins' reference is the level 1 itself, so the two criteria are one.
    for name in ("plain", "preconditioned"):
        for t in runs["barlow_twins"][name]["tried"]:
            assert t["steps_to_pass_half"] == t["steps_to_pass"]
    # A run is stable when it neither diverges, nor ends above its initial loss, nor
    # overshoots more than twice its flow over the run's own horizon (the search's own
    # record; that overshoot is relative to the flow's level at the horizon, so it is not
    # bounded by the one over the whole flow, which can end higher).
    from stepwise_ntk.experiments._precondition import OVERSHOOT_LIMIT

    for r in net["runs"]:
        for name in ("plain", "preconditioned"):
            for t in r[name]["tried"]:
                assert OVERSHOOT_LIMIT <= t["overshoot_limit"] < np.inf
                assert t["loss_rose"] == (not t["diverged"] and t["final_loss"] > t["initial_loss"])
                assert t["stable"] == (not t["diverged"] and not t["loss_rose"]
                                       and t["overshoot"] <= t["overshoot_limit"])
    # VICReg's reference is the plain run's final eigenvalues; the level-1/2 count is its own.
    v = runs["vicreg"]
    np.testing.assert_allclose(v["pass_reference"], v["plain"]["final_eigenvalues"])
    for name in ("plain", "preconditioned"):
        chosen = v[name]["largest_stable_step_size"]
        if chosen is not None:
            t = next(t for t in v[name]["tried"] if t["step_size"] == chosen)
            assert v[name]["steps_to_half_at_largest_stable"] == t["steps_to_pass_half"]
    table = (out / "sweep.md").read_text()
    assert "speed-up to 1/2" in table and "probe change (points ± SE)" in table
    assert "Networks over seeds 0, 1" in table
    for r in runs.values():
        if "probe_accuracy_change_points" in r:
            assert r["probe_accuracy_change_se_points"] >= 0


def test_seed_summary_against_numpy_and_table():
    import numpy as np

    from stepwise_ntk.experiments._precondition import _net_table, seed_summary

    rng = np.random.default_rng(0)
    speed = {"barlow_twins": [4.0, 2.5, 9.0], "vicreg": [3.0, None, 12.0]}
    half = {"barlow_twins": [4.0, 2.5, 9.0], "vicreg": [5.0, 4.0, 2.0]}
    change, se = rng.normal(size=(2, 3)), rng.uniform(0.5, 2.0, size=(2, 3))
    runs = []
    for seed in range(3):
        for i, loss in enumerate(speed):
            runs.append({"seed": 10 + seed, "loss": loss, "alpha": 0.05,
                         "step_speedup_at_largest_stable": speed[loss][seed],
                         "step_speedup_half_at_largest_stable": half[loss][seed],
                         "probe_accuracy_change_points": change[i, seed],
                         "probe_accuracy_change_se_points": se[i, seed],
                         "step_speedup_best": None, "plain": {}, "preconditioned": {}})
    bt, vic = seed_summary(runs)
    assert (bt["loss"], bt["seeds"], vic["loss"]) == ("barlow_twins", [10, 11, 12], "vicreg")
    assert bt["step_speedup_min"] == bt["step_speedup_half_min"] == 2.5 and vic["step_speedup_half_min"] == 2.0
    np.testing.assert_allclose(bt["step_speedup_geomean"], 90.0 ** (1 / 3), rtol=1e-12)
    np.testing.assert_allclose(vic["step_speedup_half_geomean"], 40.0 ** (1 / 3), rtol=1e-12)
    # A seed without a stable run leaves no smallest or mean speed-up (it would hide the failure).
    assert vic["step_speedup_min"] is None and vic["step_speedup_geomean"] is None
    for r, i in ((bt, 0), (vic, 1)):
        np.testing.assert_allclose(r["probe_change_mean_points"], change[i].mean(), rtol=1e-12)
        np.testing.assert_allclose(r["probe_change_mean_se_points"], np.sqrt((se[i] ** 2).mean() / 3), rtol=1e-12)
        np.testing.assert_allclose(r["probe_change_seed_sd_points"], change[i].std(ddof=1), rtol=1e-12)
    per_seed = [{"seed": k, "probe_images": 500} for k in (10, 11, 12)]
    table = "\n".join(_net_table({"seeds": [10, 11, 12], "per_seed": per_seed, "runs": runs, "summary": [bt, vic]}))
    assert "Networks over seeds 10, 11, 12" in table
    assert "fitted on both views of 500 labelled training images" in table
    assert "| vicreg | 0.05 | 5.00, 4.00, 2.00 | 2.00 | 3.42 | – | – |" in table
    assert table.count("| barlow_twins |") == 4  # three seeds' rows and the summary


def test_overshoot_is_relative_to_the_start_and_the_end_level():
    import numpy as np

    from stepwise_ntk.experiments._precondition import overshoot

    t = np.linspace(0, 1, 50)[:, None]
    flow = np.hstack([1 - np.exp(-8 * t), 1 - np.exp(-3 * t)])  # a monotone rise to its level
    assert overshoot(flow) <= 1.0
    large_start = np.hstack([1 + 2 * np.exp(-5 * t), 0.5 + 0 * t])  # α = 1: C(0) above I, decaying
    assert overshoot(large_start) <= 1.0
    simclr = 20 * np.hstack([t, 0.8 * t])  # keeps growing: the end is its level
    assert overshoot(simclr) == 1.0
    spike = flow.copy()
    spike[5, 0] = 40.0  # a catapult: the top eigenvalue jumps and falls back
    assert overshoot(spike) == 40.0


def test_probe_is_fitted_on_the_probe_images_when_given():
    """With probe images the probe is fitted on their rows (after the held-out ones) and
    scored on the held-out rows; without, on the network's training views. Rows that carry
    the label and rows that do not tell the two apart."""
    from types import SimpleNamespace

    import numpy as np

    from stepwise_ntk.experiments._precondition import _run_probe

    rng = np.random.default_rng(0)
    n_train, n_held, n_probe = 40, 30, 60

    def views(labels, informative):  # pairing order: both views of each image, stacked
        lab = np.concatenate([labels, labels])
        signal = np.eye(3)[lab] if informative else np.zeros((lab.size, 3))
        return signal * 3.0 + 0.1 * rng.normal(size=(lab.size, 3))

    train_l, held_l, probe_l = (rng.integers(0, 3, k) for k in (n_train, n_held, n_probe))
    res = SimpleNamespace(train_embeddings=views(train_l, False),
                          test_embeddings=np.concatenate([views(held_l, True), views(probe_l, True)]))
    with_probe = _run_probe(res, 2 * n_held, train_l, held_l, probe_l)
    without = _run_probe(res, 2 * n_held, train_l, held_l)
    assert with_probe.accuracy == 1.0  # fitted on informative rows
    assert without.accuracy < 0.7  # fitted on the uninformative training views
    assert with_probe.correct.shape == without.correct.shape == (2 * n_held,)
