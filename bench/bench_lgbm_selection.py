"""Selection honesty of LightGBM's early stopping: the same folds, the round count chosen on the
fold's valid rows (its OOF rows, optimistic), on held-out training prompts (the default), or fixed.

    python bench/bench_lgbm_selection.py --artifacts /work/pl_run/artifacts

The folder needs prepared/train.parquet and folds.parquet (any finished pipeline run has them).
Prints each variant's OOF log loss, its gap to the honest default, and the rounds per fold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ensemble.core.config import load_params  # noqa: E402
from ensemble.core.data import load_battles  # noqa: E402
from ensemble.core.folds import attach_folds  # noqa: E402
from ensemble.core.metrics import log_loss, prior_proba  # noqa: E402
from ensemble.models.lgbm.model import LGBMModel  # noqa: E402

VARIANTS = {  # name -> lgbm overrides
    "valid fold (old default)": {"early_stopping": "valid"},
    "inner 20% prompts + refit": {"early_stopping": "inner", "early_stopping_folds": 0},
    "inner 5-fold CV + refit": {"early_stopping": "inner", "early_stopping_folds": 5},
    "inner 3-fold CV + refit": {"early_stopping": "inner", "early_stopping_folds": 3},
    "inner 30% prompts + refit": {"early_stopping": "inner", "early_stopping_folds": 0, "early_stopping_frac": 0.3},
    "fixed 20 rounds": {"early_stopping_rounds": 0, "n_estimators": 20},
    "fixed 50 rounds": {"early_stopping_rounds": 0, "n_estimators": 50},
    "fixed 100 rounds": {"early_stopping_rounds": 0, "n_estimators": 100},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default="/work/pl_run/artifacts")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="lgbm section read from here")
    ap.add_argument("--only", nargs="*", help="variant names (substring match)")
    args = ap.parse_args()
    art = Path(args.artifacts)
    train = load_battles(art / "prepared" / "train.parquet")
    fold_of = attach_folds(train, pd.read_parquet(art / "folds.parquet"))
    y = train["label"].to_numpy()
    base = load_params(args.params).get("lgbm", {})
    print(f"{len(train)} rows, {fold_of.max() + 1} folds, class prior {log_loss(y, prior_proba(y, len(y))):.4f}")
    results = {}
    for name, overrides in VARIANTS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        oof, rounds, start = np.zeros((len(train), 3)), [], time.perf_counter()
        for k in range(fold_of.max() + 1):
            tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            model = LGBMModel({**base, **overrides}).fit(train.iloc[tr].reset_index(drop=True),
                                                          train.iloc[va].reset_index(drop=True))
            oof[va] = model.predict_proba(train.iloc[va].reset_index(drop=True))
            rounds.append(model.booster.best_iteration or model.booster.current_iteration())
        results[name] = log_loss(y, oof)
        print(f"{name:<34} OOF log loss {results[name]:.4f}  rounds per fold {rounds}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    honest = results.get("inner 5-fold CV + refit")
    if honest is not None:
        for name, value in results.items():
            print(f"{name:<34} {value - honest:+.4f} vs inner 5-fold CV")


if __name__ == "__main__":
    main()
