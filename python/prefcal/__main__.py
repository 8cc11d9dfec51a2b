"""``python -m prefcal``: the ``prefcal`` command line (see :mod:`prefcal.cli`)."""

from prefcal.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
