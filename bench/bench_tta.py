"""Swap TTA on a share of the battles: OOF log loss, accuracy and predict time of a finished run's fold models
at `swap_tta_share` 0, 0.33 and 1, side by side in one process (each fold model predicts its own held-out
rows, so every figure is out-of-fold; nothing is retrained).

    .venv/bin/python bench/bench_tta.py --artifacts RUN/artifacts --models lgbm dual_tower llm [--shares 0 0.33 1]

A model trained without `swap_tta` has its calibration fitted for one pass; `--force-tta` turns swap TTA on
at predict time for it anyway (figures marked "forced"). Each share gets a fresh run cache, so a share's time
includes every pass it makes (shares run in the order given).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["lgbm", "dual_tower", "llm"])
    ap.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.33, 1.0])
    ap.add_argument("--force-tta", action="store_true", help="swap TTA for models trained without it")
    args = ap.parse_args()

    from ensemble.core.cache import RunCache
    from ensemble.core.data import load_battles
    from ensemble.core.folds import attach_folds
    from ensemble.core.metrics import accuracy, log_loss
    from ensemble.models import load

    train = load_battles(args.artifacts / "prepared" / "train.parquet")
    fold_of = attach_folds(train, pd.read_parquet(args.artifacts / "folds.parquet"))
    labels = train["label"].to_numpy()
    print(f"{len(train)} battles, {fold_of.max() + 1} folds; OOF figures (each fold model on its valid rows)")
    print(f"{'model':<12}{'share':>7}{'log_loss':>10}{'accuracy':>10}{'predict s':>11}   note")
    for name in args.models:
        for share in args.shares:
            cache, proba, seconds, note = RunCache(), np.zeros((len(train), 3)), 0.0, ""
            for k in range(int(fold_of.max()) + 1):
                model = load(args.artifacts / "models" / name / f"fold_{k}", cache=cache)
                if not model.config.swap_tta:
                    if not args.force_tta:
                        note = "trained without swap_tta: share has no effect (--force-tta)"
                    else:
                        model.config, note = dataclasses.replace(model.config, swap_tta=True), "forced TTA"
                model.config = dataclasses.replace(model.config, swap_tta_share=share)
                va = np.flatnonzero(fold_of == k)
                start = time.perf_counter()
                proba[va] = model.predict_proba(train.iloc[va].reset_index(drop=True))
                seconds += time.perf_counter() - start
            acc = accuracy(labels, proba)
            print(f"{name:<12}{share:>7.2f}{log_loss(labels, proba):>10.4f}{acc:>10.4f}{seconds:>11.1f}   {note}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
