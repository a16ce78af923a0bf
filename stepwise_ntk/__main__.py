"""``python -m stepwise_ntk``: the command line (:func:`stepwise_ntk.experiments.main`)."""

from stepwise_ntk.experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
