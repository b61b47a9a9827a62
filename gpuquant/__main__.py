"""``python -m gpuquant``: the same command line as the ``gpuquant`` script (see :mod:`gpuquant.cli`)."""

from __future__ import annotations

import sys

from gpuquant.cli import main

if __name__ == "__main__":
    sys.exit(main())
