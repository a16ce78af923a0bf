"""The logic of tools/nt_suite.py (pin, hash check, unpack, selection, summary), offline.

Nothing here downloads the sdist or runs neural-tangents' suite: archives, lock entries
and junit reports are built in the test, and the expected values are counted by hand
or computed independently (hashlib).
"""

import hashlib
import importlib.util
import io
import sys
import tarfile
import types
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nt_suite", ROOT / "tools" / "nt_suite.py")
nt_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nt_suite)

DATA = b"not really a tarball"
DIGEST = hashlib.sha256(DATA).hexdigest()


INDEX = "https://index.invalid/files"  # a neutral placeholder: .invalid never resolves


def _sdist_url(name):
    return f"{INDEX}/packages/d7/20/x/{name}"


def _lock_entry(version, *, sdist=True, digest="ab" * 32, name="neural-tangents", url=None):
    """One ``[[package]]`` entry of a uv.lock, in uv's own layout."""
    lines = [
        "[[package]]",
        f'name = "{name}"',
        f'version = "{version}"',
        'source = { registry = "https://index.invalid/simple" }',
    ]
    if sdist:
        url = url or _sdist_url(f"{name}-{version}.tar.gz")
        lines.append(f'sdist = {{ url = "{url}", hash = "sha256:{digest}", size = 215468 }}')
    wheel = f"{INDEX}/packages/f1/01/x/{name.replace('-', '_')}-{version}-py3-none-any.whl"
    lines += ["wheels = [", f'    {{ url = "{wheel}", hash = "sha256:{"ef" * 32}", size = 248718 }},', "]"]
    return "\n".join(lines) + "\n"


def _lock(*entries):
    return 'version = 1\nrevision = 5\nrequires-python = ">=3.11"\n\n' + "\n".join(entries)


def test_sdist_pin_returns_exactly_the_url_and_hash_of_the_locked_version():
    url = _sdist_url("neural-tangents-0.6.5.tar.gz")
    lock = _lock(
        _lock_entry("0.6.4", digest="cd" * 32),
        _lock_entry("0.6.5", url=url),
        _lock_entry("0.6.5", name="other-package", digest="ee" * 32),
    )
    assert nt_suite.sdist_pin(lock) == (url, "ab" * 32)


def test_sdist_pin_takes_the_url_from_the_lock_whatever_it_points_to():
    url = "https://mirror.index.invalid/some/other/path/neural-tangents-0.6.5.tar.gz"
    assert nt_suite.sdist_pin(_lock(_lock_entry("0.6.5", url=url)))[0] == url


def test_sdist_pin_of_the_project_lock():
    url, digest = nt_suite.sdist_pin((ROOT / "uv.lock").read_text())
    assert url.startswith("https://")
    assert url.endswith("/" + nt_suite.SDIST_NAME)
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_sdist_pin_refuses_a_lock_without_the_sdist():
    lock = _lock(_lock_entry("0.6.5", sdist=False))
    with pytest.raises(ValueError, match=r"neural-tangents 0\.6\.5 entry has no sdist.*uv lock"):
        nt_suite.sdist_pin(lock)


@pytest.mark.parametrize(
    "lock, message",
    [
        (_lock(_lock_entry("1.0", name="other")), r"no neural-tangents 0\.6\.5 package; .*uv lock"),
        (_lock(_lock_entry("0.6.4")), r"no neural-tangents 0\.6\.5 package \(only 0\.6\.4\)"),
        (_lock(_lock_entry("0.6.5", digest="zz")), r"no sha256 hash"),
        ("[[package]\nname = ", r"not valid TOML"),
    ],
)
def test_sdist_pin_without_a_usable_entry_says_how_to_fix(lock, message):
    with pytest.raises(ValueError, match=message):
        nt_suite.sdist_pin(lock)


class _Downloaded(Exception):
    """Stops main() right after the download."""


def _fake_suite_run(tmp_path, monkeypatch, lock_text):
    """Run main() on ``lock_text`` up to the download; return (exit status, requested URLs)."""
    lock = tmp_path / "uv.lock"
    lock.write_text(lock_text)
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return _Response(DATA)

    def stop(suite):
        raise _Downloaded

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(nt_suite, "prepare_run_dir", stop)
    monkeypatch.setitem(sys.modules, "more_itertools", types.ModuleType("more_itertools"))
    argv = ["--lock", str(lock), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    try:
        status = nt_suite.main(argv)
    except _Downloaded:
        status = None
    return status, requested


def test_the_tool_downloads_exactly_the_url_in_the_lock(tmp_path, monkeypatch):
    url = _sdist_url("neural-tangents-0.6.5.tar.gz")
    status, requested = _fake_suite_run(tmp_path, monkeypatch, _lock(_lock_entry("0.6.5", url=url, digest=DIGEST)))
    assert status is None  # got past the download to the unpacking
    assert requested == [url]
    assert (tmp_path / "cache" / nt_suite.SDIST_NAME).read_bytes() == DATA


def test_the_tool_refuses_a_lock_without_the_sdist_before_any_download(tmp_path, monkeypatch, capsys):
    status, requested = _fake_suite_run(tmp_path, monkeypatch, _lock(_lock_entry("0.6.5", sdist=False)))
    assert status == 2
    assert requested == []
    err = capsys.readouterr().err
    assert "error:" in err and "has no sdist" in err and "uv lock" in err


def test_verified_accepts_the_right_hash_and_rejects_one_flipped_byte():
    assert nt_suite.verified(DATA, DIGEST, "x") == DATA
    with pytest.raises(ValueError, match="does not match"):
        nt_suite.verified(b"N" + DATA[1:], DIGEST, "x")


def _no_network(*args, **kwargs):
    raise AssertionError("the cache should have been used")


def test_fetch_uses_a_good_cache_without_network(tmp_path, monkeypatch):
    (tmp_path / nt_suite.SDIST_NAME).write_bytes(DATA)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert nt_suite.fetch_sdist("https://example.invalid/x", DIGEST, tmp_path) == DATA


def test_fetch_refuses_a_tampered_cache(tmp_path, monkeypatch):
    (tmp_path / nt_suite.SDIST_NAME).write_bytes(DATA + b"!")
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(ValueError, match="Delete the cached file"):
        nt_suite.fetch_sdist("https://example.invalid/x", DIGEST, tmp_path)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("served,ok", [(DATA, True), (DATA[:-1], False)])
def test_fetch_downloads_and_caches_only_what_matches(tmp_path, monkeypatch, served, ok):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(served))
    cache = tmp_path / "cache"
    if ok:
        assert nt_suite.fetch_sdist("https://example.invalid/x", DIGEST, cache) == DATA
        assert [p.name for p in cache.iterdir()] == [nt_suite.SDIST_NAME]
    else:
        with pytest.raises(ValueError, match="refusing to unpack"):
            nt_suite.fetch_sdist("https://example.invalid/x", DIGEST, cache)
        assert not cache.exists() or not any(cache.iterdir())


def _tarball(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def test_unpack_writes_only_tests_and_examples(tmp_path):
    data = _tarball({
        "neural-tangents-0.6.5/tests/a_test.py": b"a",
        "neural-tangents-0.6.5/tests/stax/b_test.py": b"b",
        "neural-tangents-0.6.5/examples/ex.py": b"e",
        # NT's own package must never land beside the tests: it would shadow the patched one.
        "neural-tangents-0.6.5/neural_tangents/__init__.py": b"x",
        "neural-tangents-0.6.5/setup.py": b"s",
    })
    written = nt_suite.unpack_tests(data, tmp_path)
    assert written == ["examples/ex.py", "tests/a_test.py", "tests/stax/b_test.py"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == written
    assert (tmp_path / "tests/stax/b_test.py").read_bytes() == b"b"


def test_unpack_refuses_a_path_that_leaves_the_run_folder(tmp_path):
    data = _tarball({"neural-tangents-0.6.5/tests/../../evil.py": b"x"})
    with pytest.raises(ValueError, match="unsafe path"):
        nt_suite.unpack_tests(data, tmp_path / "run")
    assert not (tmp_path / "evil.py").exists()


def test_test_patches_apply_with_exact_counts(tmp_path):
    (tmp_path / "t.py").write_text("jax.tree_map(f, x)\njax.tree_map(g, y)\n")
    nt_suite.apply_test_patches(tmp_path, {"t.py": (("jax.tree_map(", "T(", 2, "why"),)})
    assert (tmp_path / "t.py").read_text() == "T(f, x)\nT(g, y)\n"
    with pytest.raises(ValueError, match="occurs 0 times, expected 2"):
        nt_suite.apply_test_patches(tmp_path, {"t.py": (("jax.tree_map(", "T(", 2, "why"),)})


def test_shipped_test_patches_never_touch_an_assertion_or_tolerance():
    for rel, patches in [*nt_suite.TEST_PATCHES.items(), *nt_suite.LARGE_PATCHES.items()]:
        for old, new, count, why in patches:
            for text in (old, new):
                for word in ("assert", "tol", "skip", "fail", "expect"):
                    assert word not in text.lower(), (rel, text)
            assert count >= 1 and why


def test_selection_excludes_files_that_reach_tensorflow_with_the_chain(tmp_path):
    files = {
        "tests/clean_test.py": "import jax\nfrom tests import test_utils\n",
        "tests/test_utils.py": "import numpy\n",
        "tests/via_example_test.py": "from examples import ex\n",
        "examples/ex.py": "from examples import datasets\n",
        "examples/datasets.py": "import tensorflow_datasets as tfds\n",
        "tests/experimental/tf_test.py": "from neural_tangents import experimental\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    selected, excluded = nt_suite.select_files(tmp_path, sorted(files), None)
    assert selected == ["tests/clean_test.py"]
    assert set(excluded) == {"tests/via_example_test.py", "tests/experimental/tf_test.py"}
    assert "examples/datasets.py imports tensorflow_datasets" in excluded["tests/via_example_test.py"]
    assert "neural_tangents.experimental" in excluded["tests/experimental/tf_test.py"]

    assert nt_suite.select_files(tmp_path, sorted(files), ["clean"]) == (["tests/clean_test.py"], {})
    with pytest.raises(ValueError, match="match no test file"):
        nt_suite.select_files(tmp_path, sorted(files), ["nonexistent"])


_JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
 <testcase classname="tests.a_test.ATest" name="test_ok" file="tests/a_test.py"/>
 <testcase classname="tests.a_test.ATest" name="test_ok2"/>
 <testcase classname="tests.a_test.ATest" name="test_bad">
  <failure message="AssertionError: 1 != 2">trace</failure></testcase>
 <testcase classname="tests.a_test.ATest" name="test_subtests">
  <failure message="AssertionError: first subtest">trace</failure>
  <failure message="AssertionError: second subtest">trace</failure></testcase>
 <testcase classname="tests.stax.b_test.BTest" name="test_skip">
  <skipped type="pytest.skip" message="Skipping large tests for speed."/></testcase>
 <testcase classname="tests.stax.b_test.BTest" name="test_setup">
  <error message="failed on setup">trace</error></testcase>
 <testcase classname="" name="tests.stax.b_test">
  <error message="collection failure">trace</error></testcase>
</testsuite></testsuites>
"""


def test_summary_counts_each_outcome_per_file_once_per_test():
    files = ["tests/a_test.py", "tests/stax/b_test.py", "tests/c_test.py"]
    s = nt_suite.summarize(_JUNIT, files)
    a, b, c = (s["files"][f] for f in files)
    # Two failing subtests make one failed test.
    assert a == {"passed": 2, "failed": 2, "skipped": 0, "errors": 0}
    assert b == {"passed": 0, "failed": 0, "skipped": 1, "errors": 2}
    assert c == dict.fromkeys(nt_suite.COLUMNS, 0)  # selected but nothing ran: still listed
    assert s["totals"] == {"passed": 2, "failed": 2, "skipped": 1, "errors": 2}
    assert s["failed"] == [
        "tests/a_test.py::ATest::test_bad -- AssertionError: 1 != 2",
        "tests/a_test.py::ATest::test_subtests -- AssertionError: first subtest",
    ]
    assert [e.split(" -- ")[1] for e in s["errors"]] == ["failed on setup", "collection failure"]


def test_exit_status_fails_on_any_failure_or_error_but_not_on_skips():
    counts = dict.fromkeys(nt_suite.COLUMNS, 0)
    assert nt_suite.all_passed({"totals": {**counts, "passed": 5, "skipped": 3}})
    assert not nt_suite.all_passed({"totals": {**counts, "passed": 5, "failed": 1}})
    assert not nt_suite.all_passed({"totals": {**counts, "passed": 5, "errors": 1}})


def test_table_has_a_row_per_file_and_totals():
    s = nt_suite.summarize(_JUNIT, ["tests/a_test.py", "tests/stax/b_test.py"])
    lines = nt_suite.format_table(s, {"tests/x_test.py": "needs TensorFlow"}).splitlines()
    assert lines[0].split() == ["file", *nt_suite.COLUMNS]
    assert lines[1].split() == ["tests/a_test.py", "2", "2", "0", "0"]
    assert lines[3].split() == ["total", "2", "2", "1", "2"]
    assert lines[4] == "excluded  tests/x_test.py: needs TensorFlow"


def test_run_folder_is_only_cleared_if_this_tool_made_it(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not made by nt_suite.py"):
        nt_suite.prepare_run_dir(foreign)
    assert (foreign / "precious.txt").read_text() == "keep"

    ours = tmp_path / "ours"
    nt_suite.prepare_run_dir(ours)
    (ours / "stale_test.py").write_text("old")
    nt_suite.prepare_run_dir(ours)
    assert [p.name for p in ours.iterdir()] == [nt_suite.RUN_MARKER]


def test_shipped_patches_apply_to_the_cached_sdist(tmp_path):
    cached = nt_suite.DEFAULT_CACHE / nt_suite.SDIST_NAME
    if not cached.exists():
        pytest.skip(f"{cached} not downloaded yet (tools/nt_suite.py fetches it)")
    _, digest = nt_suite.sdist_pin((ROOT / "uv.lock").read_text())
    data = nt_suite.verified(cached.read_bytes(), digest, str(cached))
    nt_suite.unpack_tests(data, tmp_path)
    nt_suite.apply_test_patches(tmp_path)  # raises unless every count matches
    nt_suite.apply_test_patches(tmp_path, nt_suite.LARGE_PATCHES)
    assert "jax.tree_map(" not in (tmp_path / "tests/test_utils.py").read_text()
