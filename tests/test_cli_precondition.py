"""``stepwise-ntk precondition``: bad input is one line on stderr, exit 2, before any work."""

import pytest

from stepwise_ntk.experiments import cli

BAD = [
    (["--eps", "0"], "--eps"),
    (["--form", "cube"], "--form"),
    (["--eps-sweep", "0.1", "-1"], "--eps-sweep"),
    (["--net-alphas", "0"], "--net-alphas"),
    (["--net-losses", "byol"], "--net-losses"),
    (["--net-arch-options", "depth=1,depth=2"], "--net-arch-options"),
]


@pytest.mark.parametrize("flags,needle", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_input_is_one_line(tmp_path, capsys, flags, needle):
    rc = cli.main(["precondition", "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("stepwise-ntk precondition: error: "), err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
