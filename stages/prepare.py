"""DVC stage: parse, validate and clean the `data` section's train / test CSVs into parquet.

    python stages/prepare.py artifacts/prepared
"""

import argparse
import sys
from pathlib import Path

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import read_section
from ensemble.core.data import DataConfig, read_battles, save_battles
from ensemble.core.io import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for train.parquet, test.parquet, summary.json")
    args = ap.parse_args()
    data = read_section("data", DataConfig)
    train = read_battles(data.train, labels=True)
    save_battles(args.out / "train.parquet", train)
    test = read_battles(data.test, labels=False, drop_duplicates=False)
    save_battles(args.out / "test.parquet", test)
    rep = train.attrs["report"]
    write_json(args.out / "summary.json", {
        "train_rows": len(train), "train_rows_read": rep.rows_read, "duplicates_dropped": rep.duplicates_dropped,
        "raw_cells": rep.raw_cells, "label_counts": train["label"].value_counts().sort_index().tolist(),
        "test_rows": len(test)})
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
