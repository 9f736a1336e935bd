"""DVC stage for any base model: out-of-fold and fold-averaged test predictions, its params section
named by the model (`lgbm`, `dual_tower`, `llm`).

    python stages/oof.py lgbm --train artifacts/prepared/train.parquet --test artifacts/prepared/test.parquet \
        --folds artifacts/folds.parquet --out artifacts
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import load_params
from ensemble.core.data import load_battles
from ensemble.models import create
from ensemble.nn.distributed import relaunch
from ensemble.pipeline.distill import TEACHER_DIR, check_teachers
from ensemble.pipeline.oof import check_refit, run_oof


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="registry name, also its params.yaml section")
    ap.add_argument("--train", default="artifacts/prepared/train.parquet", help="prepared training battles")
    ap.add_argument("--test", default="artifacts/prepared/test.parquet", help="prepared test battles")
    ap.add_argument("--folds", default="artifacts/folds.parquet")
    ap.add_argument("--out", default="artifacts", help="writes oof/, test/, models/<model>/, timings/ under it")
    ap.add_argument("--unlabelled", default="artifacts/prepared/unlabelled.parquet",
                    help="prepared unlabelled battles (data.unlabelled), read when present: a student's pseudo-labels")
    ap.add_argument("--teachers", default=str(TEACHER_DIR), help="folder of teachers from elsewhere")
    args = ap.parse_args()
    params = load_params()
    section = params.get(args.model, {})
    model = create(args.model, section)  # params checked before any data or weights are read
    model.trained_folds(int(pd.read_parquet(args.folds, columns=["fold"])["fold"].max()) + 1)
    check_refit(model)
    unlabelled = Path(args.unlabelled)
    unlabelled = load_battles(unlabelled) if unlabelled.is_file() else None
    check_teachers(args.model, params, Path(args.teachers), unlabelled is not None)  # before any training
    relaunch(args.model, sys.argv)  # ENSEMBLE_LAUNCH_<NAME>: under `accelerate launch`, still from `dvc repro`
    run_oof(args.model, section, load_battles(args.train), pd.read_parquet(args.folds), args.out,
            test=load_battles(args.test), params=params, unlabelled=unlabelled, teacher_dir=Path(args.teachers))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
