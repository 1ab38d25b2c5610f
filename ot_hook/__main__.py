"""`python -m ot_hook` runs the same app as the `ot-hook` script."""

import sys

from ot_hook.launch import main

sys.exit(main())
