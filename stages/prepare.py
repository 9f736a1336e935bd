"""DVC stage: parse, validate and clean data.train / data.test into parquet."""

import sys

from ensemble.cli import fail_cleanly
from ensemble.config import load_params
from ensemble.data import read_battles, save_battles
from ensemble.io import write_json

OUT = "artifacts/prepared"


def main() -> int:
    data = load_params()["data"]
    train = read_battles(data["train"], labels=True)
    save_battles(f"{OUT}/train.parquet", train)
    test = read_battles(data["test"], labels=False, drop_duplicates=False)
    save_battles(f"{OUT}/test.parquet", test)
    rep = train.attrs["report"]
    write_json(f"{OUT}/summary.json", {
        "train_rows": len(train), "train_rows_read": rep.rows_read, "duplicates_dropped": rep.duplicates_dropped,
        "raw_cells": rep.raw_cells, "label_counts": train["label"].value_counts().sort_index().tolist(),
        "test_rows": len(test)})
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
