"""Property: any flags and config file give exit 0 or 2, one line on stderr for 2, nothing left behind.

Hypothesis draws flag values (in range, at and past the bounds, of the wrong type, empty,
huge, NaN, text) and config files (known and unknown keys, any JSON value, a top level
that is not an object, malformed text) for every subcommand. The experiment itself is
replaced by a stand-in that writes ``results.json`` (exit 0 then checks the run folder,
not the science), so each example costs only the validation pass and the run folder.
"""

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepwise_ntk.experiments import cli
from stepwise_ntk.experiments._settings import _base_type, _hints, flag

COMMANDS = tuple(cli.SUBCOMMANDS)

_numbers = st.sampled_from(["0", "1", "2", "3", "-1", "8", "16", "0.5", "1e-3", "1.5", "-0.5", "nan", "inf",
                            "-inf", "1e400", "99999999999999999999", "4294967296", "none", "", "true", "x"])
_text = st.text(alphabet="abcdefxyz=,.:-_ 019[]{}'\"\n", max_size=12)


def _value_strategy(tp, field: dataclasses.Field):
    base, _ = _base_type(tp)
    options = [_numbers, _text]
    choices = field.metadata.get("choices")
    if choices:
        options.append(st.sampled_from([str(c) for c in choices]))
    if base is bool:
        options.append(st.sampled_from(["true", "false", "yes", "2"]))
    if field.name == "arch_options":
        options.append(st.sampled_from(["depth=2", "activation=erf", "d=7", "width=3", "depth=0", "bogus=1",
                                        "depth=1,depth=2", "w_std=-1", "depth=[1]", "blocks_per_group=1"]))
    return st.one_of(options)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**20) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=4,
)


@st.composite
def invocations(draw, command: str):
    """(argv with OUT/DATA/CONFIG placeholders, config file text or None, config suffix)."""
    settings_cls, _ = cli._load(command)
    hints = _hints(settings_cls)
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
    argv = [command, "--no-progress"]
    for name in chosen:
        f = fields[name]
        base, _ = _base_type(hints[name])
        values = draw(st.lists(_value_strategy(hints[name], f), min_size=1, max_size=3 if base is tuple else 1))
        if name == "data_dir":
            values = [draw(st.sampled_from(["DATA", "AFILE", "", "TMP/missing"]))]
        argv += [flag(name), *values]
    argv += ["--out", draw(st.sampled_from(["OUT", "OUT", "OUT", "", "AFILE", "FOREIGN", "AFILE/sub"]))]
    if draw(st.booleans()):
        argv.append("--overwrite")
    config, suffix = None, ".json"
    kind = draw(st.sampled_from(["none", "none", "object", "top", "malformed", "toml"]))
    if kind == "object":
        keys = st.sampled_from([*sorted(fields), "bogus", "n-pairs"])
        config = json.dumps(draw(st.dictionaries(keys, _json_values, max_size=3)))
    elif kind == "top":
        config = json.dumps(draw(_json_values.filter(lambda v: not isinstance(v, dict))))
    elif kind == "malformed":
        config = draw(st.sampled_from(["{", "{'a': 1}", "", "[1, 2", "NaN"]))
    elif kind == "toml":
        config, suffix = draw(st.sampled_from(["d = 0", "d = [", "bogus = 1", "seed = 1e30", "n_pairs = 'x'"])), ".toml"
    if config is not None:
        argv += ["--config", "CONFIG"]
    return argv, config, suffix


def _stand_in(settings, out, *, progress):
    out.write_results({"stand_in": True})
    return ""


def _listing(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _check(argv, config, suffix, cifar_dir):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "afile").write_text("x")
        (tmp / "foreign").mkdir()
        (tmp / "foreign" / "notes.txt").write_text("mine")
        if config is not None:
            (tmp / f"config{suffix}").write_text(config)
        repl = {"OUT": str(tmp / "out"), "DATA": str(cifar_dir), "AFILE": str(tmp / "afile"),
                "FOREIGN": str(tmp / "foreign"), "CONFIG": str(tmp / f"config{suffix}"), "TMP": str(tmp)}

        def sub(a):
            for k, v in repl.items():
                if a == k or a.startswith(k + "/"):
                    return v + a[len(k):]
            return a

        argv = [sub(a) for a in argv]
        before = _listing(tmp)
        err, outs = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(tmp)  # `--out ""` must not write into the working folder either
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outs):
                rc = cli.main(argv)
        finally:
            os.chdir(cwd)
        text = err.getvalue()
        assert rc in (0, 2), (argv, rc, text)
        assert "Traceback" not in text, (argv, text)
        if rc == 2:
            assert text.count("\n") == 1 and text.startswith("stepwise-ntk") and ": error: " in text, (argv, text)
            assert _listing(tmp) == before, (argv, text)  # nothing created
        else:
            assert (tmp / "out" / "results.json").is_file() and not (tmp / "out.partial").exists(), argv


def _run_property(command, cifar_dir, max_examples):
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(invocations(command))
    def prop(inv):
        _check(*inv, cifar_dir)

    load = cli._load

    def stand_in_load(name):
        settings_cls, _ = load(name)
        return settings_cls, _stand_in

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_load", stand_in_load)
        mp.delenv("STEPWISE_NTK_DATA", raising=False)
        mp.setenv("XDG_CACHE_HOME", tempfile.mkdtemp())  # no data there: the stand-in never downloads
        prop()


@pytest.mark.parametrize("command", COMMANDS)
def test_any_input_exits_0_or_2_with_one_line(command, cifar_dir):
    _run_property(command, cifar_dir, max_examples=12)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_any_input_exits_0_or_2_with_one_line_long(command, cifar_dir):
    _run_property(command, cifar_dir, max_examples=400)
