"""`python -m ensemble.profile [PROFILE] [--set key=value ...]`: a params profile applied to params.yaml
(the logic: ensemble.pipeline.profile)."""

import sys

from ensemble.core.cli import fail_cleanly
from ensemble.pipeline.profile import main

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
