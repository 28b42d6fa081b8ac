"""``python -m openplace``: the ``openplace`` command (as in ``python -m openplace draw``)."""

import sys

from openplace.cli import main

sys.exit(main())
