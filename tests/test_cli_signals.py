"""SIGINT and SIGTERM stop `network` and `sweep` with the old run intact and the partial run marked;
a rerun resumes to the numbers of an uninterrupted run.

The tests send real signals to this process at a known moment (as training starts, right after a
training checkpoint, right after a finished width); the slow ones also kill subprocesses at random
moments.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepwise_ntk.experiments import cli

NETWORK = ["network", "--n-pairs", "16", "--width", "64", "--n-test", "8", "--d", "3", "--gallery-pool", "20",
           "--n-records", "20", "--n-times", "20", "--no-progress"]
SWEEP = ["sweep", "--n-pairs", "12", "--n-test", "6", "--downsample", "8", "--d", "2", "--widths", "16", "64",
         "--step-size", "0.03", "--n-records", "20", "--no-progress"]
TIMINGS = {"wall_time_s", "train_seconds", "seconds"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMINGS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _numbers(out: Path):
    """results.json without wall-clock times (everything else must match exactly)."""
    return _strip(json.loads((out / "results.json").read_text()))


def _marker(out: Path) -> dict:
    return json.loads((out.with_name(out.name + ".partial") / "INCOMPLETE").read_text())


def _interrupt_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the handler raises here
    pytest.fail("the signal did not stop the run")


@pytest.fixture
def data_env(monkeypatch, cifar_dir):
    monkeypatch.setenv("STEPWISE_NTK_DATA", str(cifar_dir))


def test_network_trains_with_checkpoints_in_the_partial_folder(tmp_path, monkeypatch, data_env):
    """Cheap: training is stopped by SIGTERM as it starts; it was told to checkpoint and resume there."""
    import stepwise_ntk.training as training

    calls = []

    def train_then_stop(*args, **kw):
        calls.append(kw)
        _interrupt_self(signal.SIGTERM)

    monkeypatch.setattr(training, "train", train_then_stop)
    out = tmp_path / "run"
    assert cli.main([*NETWORK, "--out", str(out)]) == 128 + signal.SIGTERM
    assert not out.exists()
    assert _marker(out)["signal"] == "SIGTERM"
    assert calls[0]["resume"] is True
    assert Path(calls[0]["checkpoint_dir"]) == tmp_path / "run.partial" / "resume" / "train"


@pytest.mark.slow
def test_network_stopped_after_a_checkpoint_resumes_identically(tmp_path, monkeypatch, data_env):
    from stepwise_ntk.training import _checkpoint

    ref, out = tmp_path / "ref", tmp_path / "run"
    assert cli.main([*NETWORK, "--out", str(ref)]) == 0
    shutil.copytree(ref, out)  # a finished run to --overwrite (with other settings)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    save = _checkpoint.save_checkpoint
    saved = []

    def save_then_stop(folder, state, *, fingerprint):
        path = save(folder, state, fingerprint=fingerprint)
        saved.append(int(state.it))
        _interrupt_self(signal.SIGTERM)
        return path

    monkeypatch.setattr(_checkpoint, "save_checkpoint", save_then_stop)
    argv = [*NETWORK, "--out", str(out), "--overwrite"]
    assert cli.main(argv) == 128 + signal.SIGTERM
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # the old run, byte for byte
    marker = _marker(out)
    assert marker["status"] == "interrupted" and marker["signal"] == "SIGTERM"
    steps = json.loads((ref / "results.json").read_text())["steps"]
    assert 0 < saved[0] <= steps  # stopped inside training, with a checkpoint to resume from
    assert (tmp_path / "run.partial" / "resume" / "train" / "checkpoint.npz").is_file()
    monkeypatch.setattr(_checkpoint, "save_checkpoint", save)
    assert cli.main(argv) == 0
    assert _numbers(out) == _numbers(ref)
    assert not (tmp_path / "run.partial").exists()


def test_sweep_stopped_after_a_width_keeps_it_and_resumes_identically(tmp_path, monkeypatch, data_env, cifar_dir):
    import jax
    import jax.numpy as jnp

    from stepwise_ntk._io import jsonable
    from stepwise_ntk.data import cifar10_pairs
    from stepwise_ntk.experiments import SweepSettings, _sweep, network_problem, sweep_config
    from stepwise_ntk.predictor import width_sweep

    out = tmp_path / "run"
    write = _sweep.write_bytes
    widths = []

    def write_then_stop(path, data):
        write(path, data)
        widths.append(path.name)
        _interrupt_self(signal.SIGINT)

    monkeypatch.setattr(_sweep, "write_bytes", write_then_stop)
    assert cli.main([*SWEEP, "--out", str(out)]) == 128 + signal.SIGINT
    assert not out.exists()
    marker = _marker(out)
    assert marker["status"] == "interrupted" and marker["signal"] == "SIGINT"
    assert widths == ["width_16.pkl"]
    assert (tmp_path / "run.partial" / "resume" / "widths" / "width_16.pkl").is_file()
    monkeypatch.setattr(_sweep, "width_sweep", _only_widths(_sweep.width_sweep, {64}))
    monkeypatch.setattr(_sweep, "write_bytes", write)
    assert cli.main([*SWEEP, "--out", str(out)]) == 0  # width 16 is read back, not trained again
    # Second route: one uninterrupted library sweep over both widths, from the same problem.
    s = SweepSettings(n_pairs=12, n_test=6, downsample=8, d=2, widths=(16, 64), step_size=0.03, n_records=20,
                      data_dir=str(cifar_dir))
    key_views, _ = jax.random.split(jax.random.PRNGKey(s.seed))
    views, labels, _ = cifar10_pairs(key_views, s.n_pairs, data_dir=s.data_dir, settings=s.augment(),
                                     downsample=s.downsample, dtype=jnp.float64, subset_seed=s.seed)
    problem = network_problem(s, views, labels, 16)
    arch = s.base_architecture(16).replace(d=problem.d)
    ref = width_sweep(arch, problem.views, problem.test_views, sweep_config(s, problem.step_size), progress=False)
    got = _numbers(out)
    expected = json.loads(json.dumps(jsonable(ref.to_dict())))
    for key in ("runs", "summary", "gammas", "gap", "settings"):
        assert _strip(got[key]) == _strip(expected[key]), key


def _only_widths(width_sweep, allowed):
    def guarded(arch, views, test_views, settings, **kw):
        assert set(settings.widths) <= allowed, f"width(s) {settings.widths} trained again"
        return width_sweep(arch, views, test_views, settings, **kw)

    return guarded


def _run(argv, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "stepwise_ntk", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [NETWORK, SWEEP], ids=["network", "sweep"])
def test_random_kills_leave_the_old_run_or_a_marked_partial(tmp_path, cifar_dir, flags):
    """Kill subprocesses at random moments (SIGINT and SIGTERM), rerun until finished."""
    env = {**os.environ, "STEPWISE_NTK_DATA": str(cifar_dir)}
    ref, out = tmp_path / "ref", tmp_path / "run"
    t0 = time.perf_counter()
    p = _run([*flags, "--out", str(ref)], env)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    seconds = time.perf_counter() - t0
    p = _run([*flags, "--out", str(out), "--seed", "1"], env)  # the old run: other settings
    assert p.wait(timeout=600) == 0, p.stderr.read()
    old = {q.name: q.read_bytes() for q in out.iterdir()}
    rng = random.Random(0)
    argv = [*flags, "--out", str(out), "--overwrite"]
    for attempt in range(6):
        p = _run(argv, env)
        time.sleep(rng.uniform(0.2, 1.0) * seconds)
        signum = (signal.SIGINT, signal.SIGTERM)[attempt % 2]
        p.send_signal(signum)
        rc = p.wait(timeout=600)
        if rc == 0:  # it finished before the signal
            break
        partial = tmp_path / "run.partial"
        assert {q.name: q.read_bytes() for q in out.iterdir()} == old, f"attempt {attempt}: old run changed"
        if partial.exists():
            marker = json.loads((partial / "INCOMPLETE").read_text())
            assert marker["status"] in ("interrupted", "running"), marker
            if rc == 128 + signum:
                assert marker["status"] == "interrupted" and marker["signal"] == signal.Signals(signum).name
    else:
        p = _run(argv, env)
        assert p.wait(timeout=600) == 0, p.stderr.read()
    assert _numbers(out) == _numbers(ref)
