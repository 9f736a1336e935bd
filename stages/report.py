"""DVC stage: reliability curves and confusion matrix of the blended OOF predictions."""

import sys
from pathlib import Path

import pandas as pd

from ensemble.cli import fail_cleanly
from ensemble.report import write_plots


def main() -> int:
    for path in write_plots(pd.read_parquet("artifacts/blend_oof.parquet"), Path("artifacts/plots")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
