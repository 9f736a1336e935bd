"""DVC stage: prompt-grouped stratified folds, written once and shared by every base model."""

import sys

from ensemble.cli import fail_cleanly
from ensemble.config import load_params
from ensemble.data import load_battles
from ensemble.folds import make_folds
from ensemble.io import write_parquet


def main() -> int:
    cfg = load_params()["folds"]
    folds = make_folds(load_battles("artifacts/prepared/train.parquet"), cfg["n_splits"], cfg["seed"])
    write_parquet("artifacts/folds.parquet", folds)
    print(folds["fold"].value_counts().sort_index().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
