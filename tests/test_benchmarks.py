"""The benchmark suite: a smoke run of every benchmark at tiny size, and the harness's parts.

The smoke run is the real command (``python -m benchmarks --size tiny``) in a subprocess;
it checks the JSON and Markdown structure and that every subject's baselines were measured
in the same run and case (re-derived here, not via the harness's own check). The dynamics
case on 4 simulated CPU devices, where the function route shards ``K``, is marked slow:
tests/test_solver.py checks the sharded route against one device by default. No speed is asserted:
targets live in the benchmark output, never in tests. A second subprocess pair runs a
benchmark under ``jax.distributed`` with two processes on this machine (marked slow).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import cli
from benchmarks.harness.fits import fit_exponent, fits_over
from benchmarks.harness.memory import MemoryProbe, pin_malloc_mmap_threshold
from benchmarks.harness.problems import find_cifar_dir
from benchmarks.harness.records import BenchmarkResult, Measurement, check_results
from benchmarks.harness.report import render_markdown
from benchmarks.harness.timing import Context

ROOT = Path(__file__).resolve().parents[1]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # The suite's LLVM optimisation level (tests/conftest.py) carries over; nothing else does.
    level = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_backend_optimization_level")]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={devices}", *level])
    env["PYTHONPATH"] = str(ROOT)
    return env


def _m(name, role="subject", baselines=(), case="c", median=1.0, **kw):
    base = dict(
        benchmark="b",
        case=case,
        name=name,
        role=role,
        baselines=list(baselines),
        sizes={"n_views": 4},
        dtype="float64",
        median_s=median,
        iqr_s=0.0,
        min_s=median,
        max_s=median,
        repeats=1,
        compile_s=0.0,
        compile_method="x",
        peak_bytes=None,
        memory=None,
    )
    base.update(kw)
    return Measurement(**base)


# ------------------------------------------------------------------------------ smoke run


def _run_tiny(out: Path, tag: str, devices: int, *names: str) -> tuple[dict, str]:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks", *names, "--size", "tiny", "--repeats", "1",
         "--budget", "5", "--min-time", "0", "--quiet", "--out", str(out), "--tag", tag],
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, (
        f"benchmarks failed (rc {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    )
    return json.loads((out / f"{tag}.json").read_text()), (out / f"{tag}.md").read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Every benchmark at tiny size on one device (the real command, in a subprocess)."""
    out = tmp_path_factory.mktemp("bench")
    t0 = time.perf_counter()
    data, md = _run_tiny(out, "smoke", 1)
    return data, md, time.perf_counter() - t0


@pytest.fixture(scope="module")
def smoke_sharded(tmp_path_factory):
    """The Barlow Twins dynamics case on 4 simulated devices: the function route shards K.

    Only that case: simulated CPU devices share this machine's cores, so every sharded
    right-hand side waits on a four-way rendezvous (the SimCLR case's float64 reference
    alone takes minutes that way; it runs on one device in ``smoke``). On synthetic views:
    the sharding does not depend on the data, and ``smoke`` runs the CIFAR-10 problem.
    """
    out = tmp_path_factory.mktemp("bench4")
    data, _ = _run_tiny(out, "sharded", 4, "dynamics", "--set", "losses=", "--set", "source=synthetic")
    return data


def test_smoke_every_benchmark_ran(smoke):
    data, _, _ = smoke
    from benchmarks import load_registry

    assert set(data["benchmarks"]) == set(load_registry())
    for name, b in data["benchmarks"].items():
        # "skipped" only for the width sweep without CIFAR-10; nothing may error.
        assert b["status"] in ("ok", "skipped"), (name, b["message"])
        if b["status"] == "skipped":
            assert "not present" in b["message"] or "has no" in b["message"], (name, b["message"])
        else:
            assert b["measurements"], name
    for core in ("dynamics", "scaling", "scaling_d", "training"):
        assert data["benchmarks"][core]["status"] == "ok", core
    sweep = data["benchmarks"]["width_sweep"]
    assert (sweep["status"] == "ok") == (find_cifar_dir() is not None), sweep["message"]
    assert data["problems"] == []


def test_smoke_every_subject_has_its_baselines_in_the_same_case(smoke):
    data, _, _ = smoke
    for name, b in data["benchmarks"].items():
        refs = {
            (m["case"], m["name"]) for m in b["measurements"] if m["role"] in ("baseline", "floor")
        }
        for m in b["measurements"]:
            assert m["role"] in ("subject", "baseline", "floor", "experiment"), m
            if m["role"] == "subject":
                assert m["baselines"], (name, m["name"])
                for base in m["baselines"]:
                    assert (m["case"], base) in refs, (name, m["case"], m["name"], base)
            else:
                assert m["baselines"] == [], (name, m["name"])
            assert m["repeats"] >= 1 and m["min_s"] <= m["median_s"] <= m["max_s"], m
            assert m["median_s"] > 0 and m["iqr_s"] >= 0
            assert m["compile_s"] is None or m["compile_s"] >= 0


def _check_environment(data: dict, devices: int) -> None:
    import jax

    env = data["environment"]
    assert env["backend"] == "cpu" and env["n_local_devices"] == devices
    assert env["process_count"] == 1 and env["jax"] == jax.__version__
    assert len(env["loadavg"]) == 3 and env["cpu_count"] >= 1
    assert f"xla_force_host_platform_device_count={devices}" in env["XLA_FLAGS"]
    assert data["settings"]["size"] == "tiny" and data["settings"]["repeats"] == 1
    for b in data["benchmarks"].values():
        if b["status"] == "ok":
            assert len(b["loadavg_before"]) == 3 and b["wall_s"] > 0


def test_smoke_environment_and_settings(smoke):
    _check_environment(smoke[0], 1)


@pytest.mark.slow  # 4 simulated devices on 2 cores: every sharded right-hand side is a rendezvous
def test_sharded_smoke_environment_and_settings(smoke_sharded):
    _check_environment(smoke_sharded, 4)
    assert set(smoke_sharded["benchmarks"]) == {"dynamics"}
    assert smoke_sharded["settings"]["overrides"] == {"losses": "", "source": "synthetic"}


@pytest.mark.parametrize("devices", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_smoke_dynamics_accuracy_and_sharding(request, devices):
    data = request.getfixturevalue("smoke")[0] if devices == 1 else request.getfixturevalue("smoke_sharded")
    ms = {(m["case"], m["name"]): m for m in data["benchmarks"]["dynamics"]["measurements"]}
    bt = next(c for c, _ in ms if c.startswith("bt "))
    nt_err = ms[(bt, "nt.predict.gradient_descent")]["extra"]["max_abs_err"]
    # Three independent integrations (NT's odeint, the eigen and function routes) agree with
    # the float64 reference; the eigenvalues are O(1), so 1e-4 would catch a wrong flow.
    assert nt_err < 1e-4
    # Equal accuracy: within 1e-3 for every route, and the "@ baseline accuracy"
    # run of the eigen route within the baseline's own error.
    for route in ("solve[eigen]", "solve[function]", "solve[eigen] @ baseline accuracy"):
        e = ms[(bt, route)]["extra"]
        assert e["equal_accuracy"] is True and e["max_abs_err"] <= e["accuracy_target"], (route, e)
        assert e["accuracy_target"] == (nt_err if "baseline" in route else 1e-3), (route, e)
    # Every mode stepped within the horizon (it reaches past 1/2), or the problem is wrong.
    assert (
        ms[(bt, "solve[eigen]")]["extra"]["steps_past_half"]
        == ms[(bt, "solve[eigen]")]["sizes"]["d"]
    )
    # 2n = 64 is divisible by the 4 simulated devices: the function route shards K.
    assert ms[(bt, "solve[function]")]["extra"]["n_devices"] == devices
    assert ms[(bt, "solve[eigen]")]["extra"]["n_devices"] == 1
    assert any(c.startswith("simclr ") for c, _ in ms) == (devices == 1)


def test_smoke_scaling_fits_and_markdown(smoke):
    data, md, _ = smoke
    fits = data["benchmarks"]["scaling"]["fits"]
    names = {(f["name"], f["quantity"]) for f in fits}
    assert {("eigh(K)", "median_s"), ("K@F", "median_s"), ("solve[eigen]", "median_s")} <= names
    for f in fits:
        assert f["variable"] == "n_views" and np.isfinite(f["exponent"]) and len(f["points"]) >= 2
    for name, b in data["benchmarks"].items():
        assert f"## {name}" in md
        for m in b["measurements"]:
            assert f"| {m['case']} | {m['name']} | {m['role']} |" in md


def test_smoke_training_records(smoke):
    data, _, _ = smoke
    ms = [m for m in data["benchmarks"]["training"]["measurements"] if m["role"] == "subject"]
    assert {m["case"].split()[0] for m in ms} == {"barlow_twins", "simclr", "vicreg"}
    for m in ms:
        assert m["extra"]["finished"] is True and m["extra"]["records"] > 1


# ------------------------------------------------------------------------------ multi-host


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes compiling at once: ~35 s on 2 cores
def test_distributed_two_processes(tmp_path):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks",
                "scaling",
                "--size",
                "tiny",
                "--repeats",
                "1",
                "--no-memory",
                "--quiet",
                "--distributed",
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--out",
                str(tmp_path),
                "--tag",
                f"p{i}",
            ],
            cwd=ROOT,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, e[-3000:]
    # Only process 0 writes; it sees both processes and all 4 (simulated) devices.
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p0.json", "p0.md"]
    env = json.loads((tmp_path / "p0.json").read_text())["environment"]
    assert (env["process_count"], env["n_global_devices"], env["n_local_devices"]) == (2, 4, 2)
    ms = json.loads((tmp_path / "p0.json").read_text())["benchmarks"]["scaling"]["measurements"]
    assert {m["extra"]["n_devices"] for m in ms if m["name"] == "solve[function]"} == {2}


# ------------------------------------------------------------------------------ harness parts


def test_fit_exponent_recovers_a_power_law():
    x = np.array([500.0, 1000.0, 2000.0, 4000.0])
    slope, r2 = fit_exponent(x, 3e-9 * x**2.5)
    assert slope == pytest.approx(2.5, abs=1e-12) and r2 == pytest.approx(1.0, abs=1e-12)
    noisy = 1e-9 * x**3 * np.array([1.05, 0.97, 1.02, 0.99])
    slope, r2 = fit_exponent(x, noisy)
    # closed form: least-squares slope of log y on log x
    lx, ly = np.log(x), np.log(noisy)
    ref = np.sum((lx - lx.mean()) * (ly - ly.mean())) / np.sum((lx - lx.mean()) ** 2)
    assert slope == pytest.approx(ref, rel=1e-12) and 0.99 < r2 < 1.0


@pytest.mark.parametrize(
    "x, y",
    [
        ([1.0, 1.0], [1.0, 2.0]),
        ([1.0, 2.0], [1.0, -1.0]),
        ([0.0, 2.0], [1.0, 2.0]),
        ([1.0, 2.0, 3.0], [1.0, 2.0]),
    ],
)
def test_fit_exponent_bad_input(x, y):
    with pytest.raises(ValueError):
        fit_exponent(x, y)


def test_fits_over_groups_by_name_and_skips_missing_points():
    ms = [
        _m("a", role="floor", case=f"n{n}", median=1e-9 * n**3, sizes={"n_views": n})
        for n in (10, 20, 40)
    ]
    ms += [
        _m("b", role="floor", case=f"n{n}", median=1.0, peak_bytes=None, sizes={"n_views": n})
        for n in (10, 20)
    ]
    fits = fits_over(ms, "n_views", expected={"a": 3.0})
    assert [f.name for f in fits] == ["a", "b"]
    assert fits[0].exponent == pytest.approx(3.0) and fits[0].within_tolerance is True
    assert fits[1].exponent == pytest.approx(0.0, abs=1e-12) and fits[1].within_tolerance is None
    assert fits_over(ms, "n_views", "peak_bytes") == []  # no memory recorded: nothing to fit


def test_check_results_finds_missing_baselines():
    good = [_m("s", baselines=["base"]), _m("base", role="baseline")]
    bad = [_m("s", baselines=["base"]), _m("base", role="baseline", case="other"), _m("t")]
    mk = lambda ms: BenchmarkResult("b", "", "ok", "", 1.0, None, None, ms, [])  # noqa: E731
    assert check_results([mk(good)]) == []
    problems = check_results([mk(bad)])
    assert len(problems) == 2
    assert any("'base'" in p and "not measured" in p for p in problems)
    assert any("'t'" in p and "names no baseline" in p for p in problems)


def test_measurement_validates_role():
    with pytest.raises(ValueError, match="role"):
        _m("x", role="competitor")
    with pytest.raises(ValueError, match="only subjects"):
        _m("x", role="baseline", baselines=["y"])


def test_markdown_ratios():
    ms = [
        _m("s", baselines=["base", "fl"], median=0.5),
        _m("base", role="baseline", median=2.0),
        _m("fl", role="floor", median=0.25),
    ]
    env = {
        "command": "python -m benchmarks",
        "timestamp_utc": "t",
        "git_commit": "abc",
        "git_dirty": False,
        "backend": "cpu",
        "device_kind": "cpu",
        "n_local_devices": 1,
        "process_count": 1,
        "cpu_count": 2,
        "platform": "p",
        "jax": "j",
        "jaxlib": "j",
        "neural_tangents": "n",
        "flax": "f",
        "optax": "o",
        "numpy": "n",
        "python": "p",
        "loadavg": [1.0, 1.0, 1.0],
        "XLA_FLAGS": "",
    }
    settings = {"size": "tiny", "repeats": 1, "budget_s": 1.0, "dtype": None}
    md = render_markdown(
        env, settings, [BenchmarkResult("b", "desc", "ok", "", 1.0, None, None, ms, [])]
    )
    row = next(line for line in md.splitlines() if line.startswith("| c | s |"))
    assert "4.00× base" in row and "2.00× fl" in row  # 2.0 / 0.5 and 0.5 / 0.25


def test_time_excludes_the_first_call():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.01)
        return np.zeros(())

    t = Context(size="tiny", repeats=3, min_time_s=0.0, measure_memory=False, progress=False).time(
        fn
    )
    assert len(calls) == 4 and len(t.times) == 3
    # sleep() lasts at least as long as asked: the first call's extra 0.29 s is compile time.
    assert t.median_s < 0.25 and t.compile_s >= 0.25


def test_time_with_a_cheaper_warmup():
    warm, main = [], []

    def w():
        warm.append(1)
        time.sleep(0.3 if len(warm) == 1 else 0.0)

    def f():
        main.append(1)
        time.sleep(0.01)

    t = Context(size="tiny", repeats=2, min_time_s=0.0, measure_memory=False, progress=False).time(
        f, warmup=w
    )
    assert len(warm) == 2 and len(main) == 2 and t.compile_s >= 0.25


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS sampling reads /proc")
def test_memory_probe_sees_a_64_mib_buffer():
    assert pin_malloc_mmap_threshold()
    with MemoryProbe() as probe:
        a = np.ones(8 << 20)  # 64 MiB, every page touched
        time.sleep(0.01)
        del a
    assert probe.bytes is not None and probe.bytes >= 60 << 20, probe.bytes


def test_cli_rejects_unknown_names_and_bad_options(monkeypatch, capsys):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    assert cli.main(["no_such_benchmark"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--set", "novalue"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        cli.parse_args(["--blas-threads", "0"])
    args = cli.parse_args(["--set", "n_views=[500,1000]", "--set", "source=synthetic"])
    assert args.overrides == {"n_views": [500, 1000], "source": "synthetic"}


def test_context_rejects_bad_settings():
    with pytest.raises(ValueError, match="size"):
        Context(size="huge")
    with pytest.raises(ValueError, match="repeats"):
        Context(repeats=0)
    with pytest.raises(ValueError, match="dtype"):
        Context(dtype="float16")


def test_losses_speed_rejects_an_unknown_route_before_any_work():
    from benchmarks.cases import losses_speed

    ctx = Context(size="tiny", overrides={"routes": "default,eigen"}, progress=False)
    with pytest.raises(ValueError, match=r"routes must be among \['default', 'galerkin'\].*'eigen'"):
        losses_speed.run(ctx)


def test_cheap_calls_repeat_until_min_time_and_budget_stops_them():
    def fn():
        time.sleep(0.01)

    t = Context(repeats=2, min_time_s=0.1, measure_memory=False, progress=False).time(fn)
    assert 2 <= len(t.times) <= 20 and (sum(t.times) >= 0.1 or len(t.times) == 20)
    t = Context(repeats=50, budget_s=0.05, measure_memory=False, progress=False).time(fn)
    assert len(t.times) < 50 and sum(t.times[:-1]) < 0.05 <= sum(t.times)


def test_asymptotic_range_starts_where_k_outgrows_the_cache(tmp_path, monkeypatch):
    from benchmarks.cases import scaling as bench_scaling

    # K of 2n views in float64 is 8 (2n)² bytes: twice a 32 MiB cache from 2n = 2897.
    assert bench_scaling.asymptotic_n_views(8, "cpu", 32 * 2**20) == 2897
    assert bench_scaling.asymptotic_n_views(4, "cpu", 32 * 2**20) == 4096
    # Never below the fixed-cost bound; no cache rule off the CPU or without a reading.
    assert bench_scaling.asymptotic_n_views(8, "cpu", 2**20) == bench_scaling.ASYMPTOTIC_N_VIEWS
    assert bench_scaling.asymptotic_n_views(8, "gpu", 32 * 2**20) == bench_scaling.ASYMPTOTIC_N_VIEWS
    assert bench_scaling.asymptotic_n_views(8, "cpu", None) == bench_scaling.ASYMPTOTIC_N_VIEWS
    # The sysfs reading: the largest of the cache levels, with its unit.
    for i, size in enumerate(["48K", "1024K", "32768K"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    real_path = bench_scaling.Path
    monkeypatch.setattr(bench_scaling, "Path", lambda p: tmp_path if "cache" in str(p) else real_path(p))
    assert bench_scaling.last_level_cache_bytes() == 32 * 2**20


# ------------------------------------------------------------------------------ width sweep = CLI sweep


def _cifar_or_skip() -> Path:
    cifar = find_cifar_dir()
    if cifar is None:
        pytest.skip("CIFAR-10 is not present (STEPWISE_NTK_DATA, the cache, ../shared/cifar10)")
    return cifar


def test_width_sweep_defaults_are_the_cli_sweeps():
    """``python -m benchmarks.cases.width_sweep`` with no flags is ``stepwise-ntk sweep`` with none."""
    from benchmarks.cases import width_sweep
    from stepwise_ntk.experiments import SweepSettings

    settings = width_sweep.sweep_settings(width_sweep.parse_args(["--data-dir", "somewhere"]))
    assert settings == SweepSettings(data_dir="somewhere")


def test_width_sweep_builds_the_cli_sweeps_problem(monkeypatch, tmp_path):
    """Views, held-out views, d, the step and the sweep settings equal ``stepwise-ntk sweep``'s."""
    from benchmarks.cases import width_sweep
    from stepwise_ntk.experiments import _sweep

    cifar = _cifar_or_skip()
    args = width_sweep.parse_args(
        ["--n-pairs", "16", "--n-test", "8", "--widths", "16,32", "--seed", "3", "--data-dir", str(cifar),
         "--out", str(tmp_path / "sweep.json")]
    )
    settings = width_sweep.sweep_settings(args)
    problem, arch, sweep_settings = width_sweep.sweep_problem(settings)

    class Captured(Exception):
        pass

    seen = {}

    def capture(arch, views, test_views, *args, **kwargs):  # the CLI's call of width_sweep
        seen.update(arch=arch, views=views, test_views=test_views,
                    settings=args[0] if args else kwargs.get("settings", kwargs.get("config")))
        raise Captured

    class Out:  # the run folder's interface as run_sweep uses it
        path = tmp_path

        def resume_dir(self, name):
            (tmp_path / name).mkdir(exist_ok=True)
            return tmp_path / name

    monkeypatch.setattr(_sweep, "width_sweep", capture)
    with pytest.raises(Captured):
        _sweep.run_sweep(settings, Out(), progress=False)
    np.testing.assert_array_equal(problem.views, seen["views"])
    np.testing.assert_array_equal(problem.test_views, seen["test_views"])
    assert problem.views.shape == (32, 8, 8, 3) and problem.test_views.shape == (16, 8, 8, 3)
    assert arch == seen["arch"] and arch.d == problem.d
    # The CLI may sweep one width at a time (resumable): the first call sees the first width.
    assert seen["settings"].widths[0] == sweep_settings.widths[0]
    assert sweep_settings == dataclasses.replace(seen["settings"], widths=sweep_settings.widths)
    assert sweep_settings.step_size == settings.step_size  # None: each width's step from its own kernel
