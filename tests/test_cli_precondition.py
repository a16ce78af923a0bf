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


def test_preconditioner_forms_are_the_theorys():
    from stepwise_ntk.experiments._settings import PRECONDITIONER_FORMS
    from stepwise_ntk.theory import PRECONDITIONERS

    assert PRECONDITIONER_FORMS == PRECONDITIONERS


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
