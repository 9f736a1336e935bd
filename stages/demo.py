"""DVC stage: the synthetic demo set (the `demo` section), built only while the `data` section
points into the output folder (real data: nothing is built).

    python stages/demo.py artifacts/demo
"""

import argparse
import sys

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import read_section
from ensemble.core.data import DataConfig
from ensemble.demo import DemoConfig
from ensemble.demo import main as build


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for demo_train.csv and demo_test.csv")
    args = ap.parse_args()
    cfg, data = read_section("demo", DemoConfig), read_section("data", DataConfig)
    return build(["--out-dir", args.out, "--n-train", str(cfg.n_train), "--n-test", str(cfg.n_test),
                  "--seed", str(cfg.seed), "--used-by", data.train, data.test])


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
