"""Run folders: a finished run appears whole or not at all, stopped runs are marked, reruns resume."""

import json
import os
import re
import signal
import time

import pytest

from stepwise_ntk.experiments import _run_dir
from stepwise_ntk.experiments._run_dir import (
    INCOMPLETE,
    OutputPathError,
    RunFailedError,
    RunInterrupted,
    check_output_path,
    partial_path,
    run_directory,
    stop_on_signals,
)


def _finished(out, tag="old", figures=("a.png",)):
    with run_directory(out, "demo", {"tag": tag}, overwrite=True) as run:
        for name in figures:
            (run.path / name).write_bytes(tag.encode())
        run.write_results({"tag": tag})
    return {p.name: p.read_bytes() for p in out.iterdir()}


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_the_run_appears_only_when_finished(tmp_path):
    out = tmp_path / "run"
    with run_directory(out, "demo", {"n": 1}) as run:
        assert run.path == partial_path(out) and not out.exists()
        marker = json.loads((run.path / INCOMPLETE).read_text())
        assert marker["status"] == "running" and marker["pid"] == os.getpid()
        run.write_results({"x": 1.0})
        assert not out.exists()  # published only when the block ends
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "results.json"]
    assert not partial_path(out).exists()
    assert json.loads((out / "results.json").read_text()) == {"status": "complete", "x": 1.0}


@pytest.mark.parametrize("error,status,sig", [
    (ValueError("bad value"), "failed", None),
    (KeyboardInterrupt(), "interrupted", "SIGINT"),
    (RunInterrupted(signal.SIGTERM), "interrupted", "SIGTERM"),
])
def test_a_stopped_overwrite_leaves_the_old_run_untouched(tmp_path, error, status, sig):
    out = tmp_path / "run"
    old = _finished(out)
    with pytest.raises(type(error)), run_directory(out, "demo", {"tag": "new"}, overwrite=True) as run:
        (run.path / "b.png").write_bytes(b"new")
        raise error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # byte for byte
    marker = json.loads((partial_path(out) / INCOMPLETE).read_text())
    assert marker["status"] == status and marker["signal"] == sig
    assert marker["reason"] and "rerun" in marker["resume"]
    if status == "failed":
        assert marker["reason"] == "ValueError: bad value"
    assert not (partial_path(out) / "results.json").exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_overwrite_replaces_the_whole_folder(tmp_path, monkeypatch, exchange):
    if not exchange:  # the fallback where the OS has no atomic exchange
        monkeypatch.setattr(_run_dir, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    _finished(out, "old", figures=("a.png", "projections.png"))
    _finished(out, "new", figures=("a.png",))
    # Nothing of the old run is mixed in (its projections.png is gone).
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "config.json", "results.json"]
    assert (out / "a.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or trash left


def test_a_run_without_results_is_marked(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunFailedError), run_directory(out, "demo", {}):
        pass
    assert not out.exists()
    assert "without writing results" in json.loads((partial_path(out) / INCOMPLETE).read_text())["reason"]


def test_bad_output_paths_are_refused_before_anything_is_created(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    finished = tmp_path / "finished"
    _finished(finished)
    before = _snapshot(tmp_path)
    cases = {
        "": "must name a folder",
        "   ": "must name a folder",
        str(tmp_path / "file"): "is a file",
        str(tmp_path / "file" / "sub"): "which is a file",
        str(tmp_path / "foreign"): "non-empty folder",
        str(finished): "--overwrite",
    }
    for out, needle in cases.items():
        with pytest.raises(OutputPathError, match=re.escape(needle)):
            with run_directory(out, "demo", {}):
                pytest.fail("the run must not start")
    with pytest.raises(TypeError, match="--out"):
        check_output_path(3)
    # A folder that cannot be written (os.access: root ignores permission bits).
    monkeypatch.setattr(_run_dir.os, "access", lambda *a, **k: False)
    with pytest.raises(OutputPathError, match="not writable"):
        check_output_path(tmp_path / "new" / "run")
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_parent_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_path(ro / "run")
    finally:
        ro.chmod(0o755)


def test_a_rerun_resumes_the_partial_run_of_the_same_settings(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), run_directory(out, "demo", {"n": 1}) as run:
        (run.resume_dir("train") / "checkpoint.npz").write_bytes(b"state")
        (run.path / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt
    with run_directory(out, "demo", {"n": 1}) as run:
        assert run.resumed
        assert (run.path / "resume" / "train" / "checkpoint.npz").read_bytes() == b"state"
        assert not (run.path / "half.png").exists()  # outputs are remade, only resume/ is kept
        run.write_results({})
    assert not (out / "resume").exists() and not (out / INCOMPLETE).exists()


def test_a_partial_run_of_other_settings_is_not_touched(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError), run_directory(out, "demo", {"n": 1}):
        raise ValueError("stop")
    before = _snapshot(partial_path(out))
    with pytest.raises(OutputPathError, match="other settings"):
        with run_directory(out, "demo", {"n": 2}):
            pytest.fail("the run must not start")
    assert _snapshot(partial_path(out)) == before
    with run_directory(out, "demo", {"n": 2}, overwrite=True) as run:  # --overwrite discards it
        assert not run.resumed
        run.write_results({})


def test_two_runs_into_one_folder_are_refused(tmp_path):
    out = tmp_path / "run"
    with run_directory(out, "demo", {"n": 1}) as run:
        with pytest.raises(OutputPathError, match="another run"):
            with run_directory(out, "demo", {"n": 1}):
                pytest.fail("the second run must not start")
        run.write_results({})
    assert (out / "results.json").exists()


def test_outputs_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "run"
        _finished(out)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / "results.json").stat().st_mode & 0o777 == 0o640


def test_config_records_provenance(tmp_path):
    out = tmp_path / "run"
    with run_directory(out, "demo", {"n": 1}, extra={"data_folder": "/data/cifar-10-batches-py"}) as run:
        run.write_results({})
    config = json.loads((out / "config.json").read_text())
    v = config["versions"]
    import jax

    import stepwise_ntk

    assert config["data_folder"] == "/data/cifar-10-batches-py" and config["settings"] == {"n": 1}
    assert v["stepwise_ntk"] == stepwise_ntk.__version__ and v["jax"] == jax.__version__
    assert v["backend"] == jax.default_backend() and v["devices"] == [str(d) for d in jax.devices()]
    # This checkout is a git repository: its commit is recorded (None in an installed copy).
    assert v["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", v["git_commit"])


def test_signals_raise_once_and_repeats_are_ignored():
    previous = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        with pytest.raises(RunInterrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises at the next bytecode
        assert info.value.signal_name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while stopping: ignored
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored


def test_a_signal_while_publishing_does_not_undo_the_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    publish = _run_dir._publish

    def interrupted_publish(partial, path):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # delivered inside the deferred block: recorded, not raised
        publish(partial, path)

    monkeypatch.setattr(_run_dir, "_publish", interrupted_publish)
    with stop_on_signals():
        with run_directory(out, "demo", {}) as run:
            run.write_results({})
    assert (out / "results.json").exists() and not partial_path(out).exists()


def test_long_phases_are_reported_only_with_progress(tmp_path, capsys):
    for progress in (True, False):
        with run_directory(tmp_path / f"run{progress}", "demo", {}, progress=progress) as run:
            with run.phase("contrastive eigensystem (2n = 6)"):
                pass
            run.write_results({})
        lines = capsys.readouterr().err.splitlines()
        if progress:
            assert len(lines) == 2 and lines[0].endswith("contrastive eigensystem (2n = 6) ...")
            assert re.search(r"contrastive eigensystem \(2n = 6\): done in \d+\.\d s$", lines[1])
        else:
            assert lines == []


def test_results_are_strict_json_and_say_which_numbers_were_not_finite(tmp_path):
    import numpy as np

    out = tmp_path / "run"
    with run_directory(out, "demo", {}) as run:
        run.write_results({"steps": np.array([1.0, np.nan]), "ratio": float("inf"), "nested": {"x": [-np.inf, 2]},
                           "n": 3})
    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    r = json.loads(text)
    assert r["steps"] == [1.0, None] and r["ratio"] is None and r["nested"] == {"x": [None, 2]}
    assert r["non_finite"] == {"steps[1]": "nan", "ratio": "inf", "nested.x[0]": "-inf"}


def test_as_the_program_a_stopped_run_ignores_further_signals_while_it_exits():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(RunInterrupted), stop_on_signals(ignore_after_stop=True):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN == signal.getsignal(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C during the exit: nothing happens
        time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    with stop_on_signals(ignore_after_stop=True):  # no signal: the handlers come back
        pass
    assert signal.getsignal(signal.SIGINT) == previous[signal.SIGINT]
