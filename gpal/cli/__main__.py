"""``python -m gpal.cli``: the ``gpal`` command."""

import sys

from . import main

sys.exit(main())
