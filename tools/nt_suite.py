"""Run neural-tangents' own test suite against ``stepwise_ntk.kernels._nt_compat``.

The neural-tangents (NT) 0.6.5 source distribution ships its ``tests/`` and
``examples/``. This command downloads that sdist from exactly the URL that ``uv.lock``
pins for it (the lock's ``sdist`` entry of ``neural-tangents`` 0.6.5, with its sha256;
no index host is written into this tool), checks the hash before unpacking, unpacks only
``tests/`` and ``examples/`` into a run folder, and runs them with pytest. A ``conftest.py`` written
into the run folder imports ``stepwise_ntk.kernels._nt_compat`` before any test module, so every
``import neural_tangents`` in NT's tests gets the patched package.

Excluded (reported, not run): test files that import TensorFlow, TensorFlow Datasets or
tf2jax, directly or through ``examples/`` (the TF-interop tests in ``tests/experimental``
and the examples that download data through ``tensorflow_datasets``).

The tests' own uses of JAX APIs that were removed are rewritten in the unpacked copy by
exact, counted text replacements (``TEST_PATCHES``, each with its reason); none touches
an assertion or a tolerance. NT's library code is only patched by ``_nt_compat``.

Output: a table of passed / failed / skipped / errors per file, with totals, and
``summary.json`` in ``--out``. Exit status 1 if any test that ran failed or errored, 2 if
the suite could not be run (no usable sdist entry in the lock, or no pytest report).

Usage (the test-only dependency more-itertools is not in the project's lock)::

    uv run --with more-itertools python tools/nt_suite.py [--files F ...] [--jobs N]
        [--out DIR] [--quick] [--x64] [--lock PATH]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
NT_PACKAGE = "neural-tangents"
NT_VERSION = "0.6.5"
SDIST_NAME = f"neural-tangents-{NT_VERSION}.tar.gz"
DEFAULT_CACHE = REPO / ".cache" / f"nt-{NT_VERSION}"
DEFAULT_OUT = DEFAULT_CACHE / "run"
DEFAULT_LOCK = REPO / "uv.lock"

# Imports that mean "needs TensorFlow", which this project does not install.
TF_MODULES = ("tensorflow", "tensorflow_datasets", "tf2jax", "neural_tangents.experimental")

# file in the sdist -> ((old text, new text, expected count, why), ...). Only the tests'
# own uses of removed JAX APIs; never an assertion or a tolerance.
_SHARDING_WHY = "the primitive gained a required sharding parameter; None is the unsharded default"
_TREE_MAP_WHY = "jax.tree_map was removed (JAX 0.6); jax.tree_util.tree_map is the same function"
TEST_PATCHES: dict[str, tuple[tuple[str, str, int, str], ...]] = {
    "tests/test_utils.py": (
        ("jax.tree_map(", "jax.tree_util.tree_map(", 3, _TREE_MAP_WHY),
    ),
    "tests/predict_test.py": (
        ("jax.tree_map(", "jax.tree_util.tree_map(", 1, _TREE_MAP_WHY),
    ),
    "tests/empirical_test.py": (
        ("from jax import tree_map\n", "from jax.tree_util import tree_map\n", 1, _TREE_MAP_WHY),
    ),
    "tests/rules_test.py": (
        (
            "from jax.core import Primitive\n",
            "from jax.extend.core import Primitive\n",
            1,
            "jax.core.Primitive moved to jax.extend.core (the same class)",
        ),
        # The test binds primitives directly with their parameter dicts; current JAX added
        # required sharding parameters (None: no sharding, as make_jaxpr records them) and
        # gave device_put per-operand lists.
        ("        {'axes': p}\n", "        {'axes': p, 'out_sharding': None}\n", 1, _SHARDING_WHY),
        (
            "                'broadcast_dimensions': bd\n            }",
            "                'broadcast_dimensions': bd,\n                'sharding': None\n            }",
            1,
            _SHARDING_WHY,
        ),
        (
            "            'weak_type': w\n        }",
            "            'weak_type': w,\n            'sharding': None\n        }",
            1,
            _SHARDING_WHY,
        ),
        (
            "            'dimensions': d\n        }\n                      for n_s",
            "            'dimensions': d,\n            'sharding': None\n        }\n                      for n_s",
            1,
            _SHARDING_WHY,
        ),
        (
            "                'preferred_element_type': dtype\n            } for dn in set(",
            "                'preferred_element_type': dtype,\n                'out_sharding': None\n"
            "            } for dn in set(",
            1,
            _SHARDING_WHY,
        ),
        (
            "            params = {'device': device, 'src': src}\n",
            "            params = {'devices': (device,), 'srcs': (src,), 'copy_semantics': "
            "(jax._src.dispatch.ArrayCopySemantics.REUSE_INPUT,)}\n",
            1,
            "device_put_p now takes per-operand tuples (as jax.device_put records them)",
        ),
        (
            "    ad.zeros_like_p: lambda s, _: [{}],\n\n",
            "",
            1,
            "ad.zeros_like_p was removed from JAX (no jaxpr can contain it); _nt_compat drops "
            "its rules too, so there is no primitive left to test",
        ),
    ),
}

# With --large: NT skips its large tests on CPU ("Skipping large tests for speed."); run them.
LARGE_PATCHES: dict[str, tuple[tuple[str, str, int, str], ...]] = {
    "tests/test_utils.py": (
        (
            "    platforms: tuple[str, ...] = ('cpu',)\n",
            "    platforms: tuple[str, ...] = ()\n",
            1,
            "run the tests NT skips on CPU for speed (more tests, same assertions)",
        ),
    ),
}

CONFTEST = '''\
"""Written by tools/nt_suite.py: NT's tests run against stepwise_ntk.kernels._nt_compat."""

# First, before any test module runs `import neural_tangents`: the patched package.
import stepwise_ntk.kernels._nt_compat  # noqa: F401

import jax

# The tests' random inputs were drawn with JAX's original threefry stream (the default
# until JAX 0.5). Some depend on it: batching_test draws x_other with x_self's key and
# expects different data (the new stream makes it x_self's first rows), and Monte Carlo
# tolerances were set on the old samples. Same inputs as NT's CI, no assertion changed.
jax.config.update("jax_threefry_partitionable", False)
'''

PYTEST_INI = """\
[pytest]
python_files = *_test.py
addopts = -p no:cacheprovider
"""

RUN_MARKER = ".nt_suite_run"


# ----------------------------------------------------------------------------- fetch


def sdist_pin(lock_text: str, package: str = NT_PACKAGE, version: str = NT_VERSION) -> tuple[str, str]:
    """The ``(url, sha256)`` of ``package``'s sdist as pinned in the text of a uv.lock.

    The lock is parsed as TOML; the ``[[package]]`` entry with this name and version must
    carry ``sdist = { url = ..., hash = "sha256:..." }``. The URL is returned exactly as the
    lock has it (whatever index it points to); ValueError, saying what is missing, when the
    lock has no such entry, no sdist for it, no URL or no sha256.
    """
    fix = f"the project must lock {package}=={version} with its sdist (run `uv lock`)"
    try:
        lock = tomllib.loads(lock_text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"uv.lock is not valid TOML ({e}); {fix}.") from None
    packages = lock.get("package", [])
    entries = [p for p in packages if isinstance(p, dict) and p.get("name") == package]
    entry = next((p for p in entries if p.get("version") == version), None)
    if entry is None:
        found = sorted({str(p.get("version")) for p in entries})
        raise ValueError(
            f"uv.lock has no {package} {version} package"
            + (f" (only {', '.join(found)})" if found else "")
            + f"; {fix}."
        )
    sdist = entry.get("sdist")
    if not sdist:
        raise ValueError(
            f"uv.lock's {package} {version} entry has no sdist (wheels only?): NT's tests ship "
            f"only in the source distribution; {fix}."
        )
    url = str(sdist.get("url", ""))
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(
            f"uv.lock's {package} {version} sdist has no download URL (got {sdist!r}); {fix}."
        )
    digest = re.fullmatch(r"sha256:([0-9a-f]{64})", str(sdist.get("hash", "")))
    if digest is None:
        raise ValueError(
            f"uv.lock's {package} {version} sdist has no sha256 hash (got {sdist.get('hash')!r}); "
            f"{fix}."
        )
    return url, digest.group(1)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verified(data: bytes, sha256: str, source: str) -> bytes:
    """``data`` if its sha256 is ``sha256``, else ValueError."""
    got = sha256_of(data)
    if got != sha256:
        raise ValueError(
            f"{source}: sha256 {got} does not match the {sha256} pinned in uv.lock; "
            "refusing to unpack it. Delete the cached file and run again to re-download."
        )
    return data


def fetch_sdist(url: str, sha256: str, cache_dir: Path) -> bytes:
    """The sdist's bytes, from ``cache_dir`` or downloaded from ``url``; always hash-checked."""
    cached = cache_dir / SDIST_NAME
    if cached.exists():
        return verified(cached.read_bytes(), sha256, str(cached))
    print(f"downloading {url}", flush=True)
    with urllib.request.urlopen(url, timeout=60) as response:
        data = verified(response.read(), sha256, url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, cached)
    return data


# ----------------------------------------------------------------------------- unpack


def unpack_tests(data: bytes, dest: Path) -> list[str]:
    """Write the sdist's ``tests/`` and ``examples/`` under ``dest``; return their paths.

    Only regular files under those two folders are written (never NT's own package, which
    would shadow the patched one), and no path may leave ``dest``.
    """
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[1] not in ("tests", "examples"):
                continue
            if any(p in ("..", "") or p.startswith("/") for p in parts):
                raise ValueError(f"unsafe path in sdist: {member.name!r}")
            rel = PurePosixPath(*parts[1:])
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            written.append(str(rel))
    return sorted(written)


def apply_test_patches(root: Path, patches: Mapping[str, Sequence[tuple]] = TEST_PATCHES):
    """Apply ``patches`` to the files under ``root``; each must match its expected count."""
    for rel, items in patches.items():
        path = root / rel
        text = path.read_text()
        for old, new, count, _why in items:
            found = text.count(old)
            if found != count:
                raise ValueError(
                    f"test patch for {rel}: {old.strip()!r} occurs {found} times, expected "
                    f"{count}; the sdist is not neural-tangents {NT_VERSION} as patched here."
                )
            text = text.replace(old, new)
        path.write_text(text)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def tf_dependency(root: Path, rel: str, _seen: set[str] | None = None) -> str | None:
    """Why the module file ``rel`` under ``root`` needs TensorFlow, or None if it does not.

    Follows imports of other modules under ``root`` (``examples.x``, ``tests.x``).
    """
    seen = set() if _seen is None else _seen
    if rel in seen:
        return None
    seen.add(rel)
    for name in sorted(_imports(root / rel)):
        if any(name == m or name.startswith(m + ".") for m in TF_MODULES):
            return f"{rel} imports {name}"
        local = name.replace(".", "/") + ".py"
        if (root / local).is_file():
            why = tf_dependency(root, local, seen)
            if why is not None:
                return why
    return None


def select_files(
    root: Path, all_files: Iterable[str], wanted: Sequence[str] | None
) -> tuple[list[str], dict[str, str]]:
    """Test files to run and ``{excluded file: reason}``.

    ``wanted``: paths or substrings of paths (``stax``, ``tests/predict_test.py``); None
    for all. Test files needing TensorFlow are excluded with the reason.
    """
    tests = [f for f in all_files if f.startswith("tests/") and f.endswith("_test.py")]
    if wanted:
        unknown = [w for w in wanted if not any(w in f for f in tests)]
        if unknown:
            raise ValueError(
                f"--files {unknown} match no test file; choose from: " + " ".join(tests)
            )
        tests = [f for f in tests if any(w in f for w in wanted)]
    selected, excluded = [], {}
    for rel in tests:
        why = tf_dependency(root, rel)
        if why is None:
            selected.append(rel)
        else:
            excluded[rel] = f"needs TensorFlow ({why}), which this project does not install"
    return selected, excluded


# ----------------------------------------------------------------------------- results


def _testcase_file(case: ET.Element, files: Sequence[str]) -> str:
    """The test file a junit ``testcase`` belongs to, one of ``files`` if it can be told."""
    for attr in ("classname", "name"):
        parts = case.get(attr, "").split(".")
        for n in range(len(parts), 0, -1):
            candidate = "/".join(parts[:n]) + ".py"
            if candidate in files:
                return candidate
    return case.get("file") or "?"


def _outcome(case: ET.Element) -> str:
    if case.find("error") is not None:
        return "errors"
    if case.find("failure") is not None:
        return "failed"
    return "skipped" if case.find("skipped") is not None else "passed"


COLUMNS = ("passed", "failed", "skipped", "errors")


def summarize(junit_xml: str, files: Sequence[str]) -> dict:
    """Per-file counts and the failing test ids from a pytest junit (xunit1) report.

    One count per testcase: a test whose subtests fail is one failed test.
    """
    per_file: dict[str, dict[str, int]] = {f: dict.fromkeys(COLUMNS, 0) for f in files}
    problems: dict[str, list[str]] = {"failed": [], "errors": []}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        rel = _testcase_file(case, files)
        counts = per_file.setdefault(rel, dict.fromkeys(COLUMNS, 0))
        outcome = _outcome(case)
        counts[outcome] += 1
        if outcome in problems:
            node = case.find("error" if outcome == "errors" else "failure")
            message = (node.get("message") or "").strip().splitlines()
            problems[outcome].append(
                f"{rel}::{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
                + (f" -- {message[0][:200]}" if message else "")
            )
    totals = {c: sum(v[c] for v in per_file.values()) for c in COLUMNS}
    return {"files": per_file, "totals": totals, **problems}


def all_passed(summary: Mapping) -> bool:
    """True if no test failed or errored."""
    return not (summary["totals"]["failed"] or summary["totals"]["errors"])


def format_table(summary: Mapping, excluded: Mapping[str, str] = {}) -> str:
    width = max([len(f) for f in summary["files"]] + [len("file"), len("total")])
    lines = ["file".ljust(width) + "".join(c.rjust(9) for c in COLUMNS)]
    for rel, counts in sorted(summary["files"].items()):
        lines.append(rel.ljust(width) + "".join(str(counts[c]).rjust(9) for c in COLUMNS))
    lines.append("total".ljust(width) + "".join(str(summary["totals"][c]).rjust(9) for c in COLUMNS))
    for rel, why in sorted(excluded.items()):
        lines.append(f"excluded  {rel}: {why}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- run


def prepare_run_dir(suite: Path) -> None:
    """Empty ``suite`` for a fresh unpack, refusing to touch a folder this tool did not make."""
    if suite.exists():
        if any(suite.iterdir()) and not (suite / RUN_MARKER).exists():
            raise ValueError(f"{suite} exists and was not made by nt_suite.py; pick another --out.")
        import shutil

        shutil.rmtree(suite)
    suite.mkdir(parents=True)
    (suite / RUN_MARKER).write_text("")


def run_pytest(suite: Path, files: Sequence[str], jobs: int, junit: Path, log: Path, env: dict) -> int:
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-o", "junit_family=xunit1",
           f"--junitxml={junit}", "--durations=15", "-rfE"]
    if jobs > 1:
        cmd += ["-n", str(jobs)]
    print(f"$ (cd {suite} && python {' '.join(cmd[1:])})", flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=suite, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
        return proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", metavar="F",
                        help="test files to run: paths or substrings (e.g. stax predict_test)")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1,
                        help="pytest-xdist workers (default: CPU count; 1 = no xdist)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"run folder for the unpacked tests, logs and summary.json "
                             f"(default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="where the downloaded sdist is kept")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK,
                        help="the uv.lock that pins the sdist's URL and sha256 "
                             f"(default {DEFAULT_LOCK.relative_to(REPO)})")
    parser.add_argument("--quick", action="store_true",
                        help="1 sampled case per parameterized test instead of NT's 4")
    parser.add_argument("--large", action="store_true",
                        help="also run the tests NT skips on CPU for speed (hours on 2 cores)")
    parser.add_argument("--x64", action="store_true",
                        help="JAX_ENABLE_X64=1 (NT's CI ran both; default is JAX's float32)")
    args = parser.parse_args(argv)
    try:
        import more_itertools  # noqa: F401
    except ImportError:
        parser.error("NT's tests need more-itertools: run `uv run --with more-itertools "
                     "python tools/nt_suite.py ...`")

    try:
        url, sha256 = sdist_pin(args.lock.read_text())
    except (OSError, ValueError) as e:
        print(f"nt_suite.py: error: {args.lock}: {e}", file=sys.stderr)
        return 2
    data = fetch_sdist(url, sha256, args.cache)
    out = args.out.resolve()
    suite = out / "suite"
    prepare_run_dir(suite)
    all_files = unpack_tests(data, suite)
    apply_test_patches(suite)
    if args.large:
        apply_test_patches(suite, LARGE_PATCHES)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "pytest.ini").write_text(PYTEST_INI)
    files, excluded = select_files(suite, all_files, args.files)

    env = dict(os.environ)
    env.update(
        PYTHONHASHSEED="0",  # as NT's CI: the sampled parameter cases depend on it
        NT_NUM_GENERATED_CASES="1" if args.quick else env.get("NT_NUM_GENERATED_CASES", "4"),
        JAX_ENABLE_X64="1" if args.x64 else "0",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    junit, log = out / "junit.xml", out / "pytest.log"
    start = time.monotonic()
    run_pytest(suite, files, args.jobs, junit, log, env)
    elapsed = time.monotonic() - start
    if not junit.exists():
        print(f"pytest wrote no report; see {log}", file=sys.stderr)
        return 2
    summary = summarize(junit.read_text(), files)
    summary.update(
        excluded=excluded, seconds=round(elapsed, 1), jobs=args.jobs, quick=args.quick,
        large=args.large,
        x64=args.x64, generated_cases=env["NT_NUM_GENERATED_CASES"],
        neural_tangents=NT_VERSION, sdist_sha256=sha256,
    )
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    print()
    print(format_table(summary, excluded))
    print(f"{elapsed / 60:.1f} min, summary: {out / 'summary.json'}")
    if not all_passed(summary):
        print("FAILED: see the failing tests in summary.json and the log", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
