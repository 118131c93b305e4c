"""``python -m openeva`` is the ``openeva`` command."""

import sys

from openeva.cli import main

sys.exit(main())
