"""DVC stage: prompt-grouped stratified folds (the `folds` section), written once and shared by
every base model.

    python stages/folds.py artifacts/prepared/train.parquet artifacts/folds.parquet
"""

import argparse
import sys

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import read_section
from ensemble.core.data import load_battles
from ensemble.core.folds import FoldsConfig, make_folds
from ensemble.core.io import write_parquet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", help="prepared training battles (parquet)")
    ap.add_argument("out", help="folds file to write (id, fold)")
    args = ap.parse_args()
    cfg = read_section("folds", FoldsConfig)
    folds = make_folds(load_battles(args.train), cfg.n_splits, cfg.seed)
    write_parquet(args.out, folds)
    print(folds["fold"].value_counts().sort_index().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
