"""DVC stage: the submission for the pipeline's own test file, from the test predictions the model
stages wrote (`--reuse-test-predictions`) and the fitted blend.

    python stages/submit.py artifacts/prepared/test.parquet -o artifacts/submission.csv --artifacts artifacts \
        --reuse-test-predictions
"""

import sys

from ensemble.core.cli import fail_cleanly
from ensemble.pipeline.submit import main

if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
