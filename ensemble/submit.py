"""`python -m ensemble.submit test.csv [-o submission.csv]`: a test file predicted by the finished run
(the logic: ensemble.pipeline.submit)."""

import sys

from ensemble.core.cli import fail_cleanly
from ensemble.pipeline.submit import main

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
