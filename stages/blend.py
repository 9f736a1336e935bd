"""DVC stage: the blend (the `blend` section) fitted on the OOF files, scored cross-fitted.

    python stages/blend.py --artifacts artifacts --metrics metrics.json
"""

import sys

from ensemble.blend.__main__ import main
from ensemble.core.cli import fail_cleanly

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
