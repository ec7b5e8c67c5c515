"""``python -m gpal``: the ``gpal`` command (as ``python -m gpal.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
