"""DVC stage: parse, validate and clean the `data` section's train / test files into parquet.

    python stages/prepare.py artifacts/prepared

Both files are read and checked before anything is written, so a bad file leaves no outputs.
"""

import argparse
import math
import sys
from pathlib import Path

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import read_section
from ensemble.core.data import (
    LABEL_NAMES,
    DataConfig,
    DataError,
    class_counts,
    format_counts,
    read_battles,
    save_battles,
)
from ensemble.core.io import write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for train.parquet, test.parquet, summary.json")
    args = ap.parse_args()
    data = read_section("data", DataConfig)
    train = read_battles(data.train, labels=True, side_seed=data.side_seed)
    # labels=None: a labelled test file is checked against the training classes below, then its labels dropped
    test = read_battles(data.test, labels=None, drop_duplicates=False, side_seed=data.side_seed)
    train_report, test_report = train.attrs["report"], test.attrs["report"]
    # unlabelled pairs come in the kaggle layout whatever the training data was (a preference layout always
    # holds a verdict); a preference test file must be in the training file's own layout
    if test_report.layout not in ("kaggle", train_report.layout):
        raise DataError(f"{data.test}: layout {test_report.layout!r}, but the training file {data.train} is "
                        f"{train_report.layout!r}; give the test pairs in the kaggle layout (id, prompt, response_a, "
                        f"response_b) or in the training file's layout (docs/data.md)")
    counts = class_counts(train["label"])
    has_ties = counts["tie"] > 0
    floor = 1 / (len(train) + 3)  # the add-one floor of a class the training rows never held
    notes = []  # one stderr line: the class the training data lacks, and what a labelled test file's rows of it cost
    if not has_ties:
        notes.append(f"the training data {data.train} has no ties ({format_counts(counts)}): the models predict "
                     f"P(tie) only at a small floor (about 1/(n+3) for n training rows, {floor:.1g} here)")
    if "label" in test:
        test_counts = class_counts(test["label"])
        for name in LABEL_NAMES:
            if test_counts[name] and not counts[name]:  # accepted (the labels are dropped), but scoring them costs
                notes.append(f"the test file {data.test} holds {test_counts[name]} {name} rows "
                             f"({format_counts(test_counts)}), a class the training data lacks: each one scored gets "
                             f"P({name}) of about {floor:.1g} and costs about {-math.log(floor):.1f} nats of log loss")
        test = test.drop(columns="label")
    if notes:
        print("note: " + "; ".join(notes), file=sys.stderr)
    unlabelled = None
    if data.unlabelled:  # read and checked before anything is written, as the two files above
        unlabelled = read_battles(data.unlabelled, labels=None, drop_duplicates=False, side_seed=data.side_seed)
        layout = unlabelled.attrs["report"].layout
        if "label" in unlabelled:
            raise DataError(f"{data.unlabelled}: data.unlabelled holds labels (layout {layout!r}"
                            f"{', which always holds a verdict' if layout != 'kaggle' else ''}); give unlabelled "
                            f"battles in the kaggle layout without winner_* columns, or add them to data.train")
        clash = sorted(set(unlabelled["id"]) & set(train["id"]))
        if clash:
            raise DataError(f"{data.unlabelled}: {len(clash)} id(s) also in the training file {data.train} "
                            f"(e.g. {', '.join(clash[:5])}); unlabelled battles need ids of their own")
    save_battles(args.out / "train.parquet", train)
    if unlabelled is not None:
        save_battles(args.out / "unlabelled.parquet", unlabelled)
    save_battles(args.out / "test.parquet", test)
    write_json(args.out / "summary.json", {
        "train_rows": len(train), "train_rows_read": train_report.rows_read, "train_layout": train_report.layout,
        "duplicates_dropped": train_report.duplicates_dropped, "raw_cells": train_report.raw_cells,
        "label_counts": list(counts.values()),  # always [A wins, B wins, tie]
        "class_counts": counts, "has_ties": has_ties,
        "test_rows": len(test), "test_layout": test_report.layout,
        "unlabelled_rows": 0 if unlabelled is None else len(unlabelled)})
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
