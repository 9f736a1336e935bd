"""`python -m ensemble.bundle OUT`: the finished run as one folder that predicts offline on Kaggle
(the logic: ensemble.pipeline.bundle)."""

import sys

from ensemble.core.cli import fail_cleanly
from ensemble.pipeline.bundle import main

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
