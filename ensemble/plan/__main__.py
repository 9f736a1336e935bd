"""`python -m ensemble.plan`: see ensemble.plan."""

import sys

from ensemble.core.cli import fail_cleanly
from ensemble.plan import main

sys.exit(fail_cleanly(main))
