"""DVC stage for any base model: `python stages/oof.py <model>` (OOF + fold-averaged test predictions)."""

import sys

import pandas as pd

from ensemble.cli import fail_cleanly
from ensemble.config import load_params
from ensemble.data import load_battles
from ensemble.oof import run_oof


def main() -> int:
    name = sys.argv[1]
    params = load_params()
    run_oof(name, params.get(name, {}), load_battles("artifacts/prepared/train.parquet"),
            pd.read_parquet("artifacts/folds.parquet"), "artifacts",
            test=load_battles("artifacts/prepared/test.parquet"))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
