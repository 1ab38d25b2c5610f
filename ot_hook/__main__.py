"""`python -m ot_hook` runs the same app as the `ot-hook` script."""

import sys

from ot_hook.cli import main

sys.exit(main())
