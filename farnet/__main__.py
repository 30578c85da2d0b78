"""``python -m farnet``: the ``farnet`` command where the package is not installed (``PYTHONPATH`` at the
repository root is enough), e.g. on a machine that receives the working tree for one command."""

import sys

from farnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
