"""``python -m gpal``: the ``gpal`` command (as ``python -m gpal.cli``)."""

import sys

from .cli import main

sys.exit(main())
