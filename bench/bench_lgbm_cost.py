"""What a LightGBM fold costs at Kaggle scale, per params variant, measured side by side.

    python bench/bench_lgbm_cost.py                                   # params.yaml's lgbm section
    python bench/bench_lgbm_cost.py "vectorizer.max_features=3000" "feature_fraction=0.5 feature_fraction_bynode=1.0"

Fold 0 of the 57,477-row resampled set (bench_lgbm.kaggle_scale_files): for each variant (params.yaml's
lgbm section with that variant's space-separated key=value overrides), the featurisation time (vectorizer fit +
swap-augmented matrix) and the boosting cost per round, as medians over --repeats runs taken in turn, so the ratios
are side by side.
A fold's fit costs about features + rounds x ms/round; the stage is 5 folds plus test predictions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*",
                    help='overrides of params.yaml\'s lgbm section, '
                         'e.g. "learning_rate=0.03 vectorizer.max_features=3000"')
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=57_477)
    args = ap.parse_args()

    import lightgbm as lgb
    from bench_lgbm import kaggle_scale_files
    from common import parse_sets

    from ensemble.core.config import load_params
    from ensemble.core.data import read_battles
    from ensemble.core.folds import attach_folds, make_folds
    from ensemble.models.lgbm.model import LGBMModel

    base = load_params(ROOT / "params.yaml").get("lgbm", {})
    variants = {"params.yaml": base} | {v: parse_sets(v.split(), base) for v in args.variants}
    with tempfile.TemporaryDirectory(prefix="bench_lgbm_cost_") as tmp:
        kaggle_scale_files(Path(tmp), args.n_train, 1)
        train = read_battles(Path(tmp) / "train.csv")
    fold_of = attach_folds(train, make_folds(train, 5, seed=42))
    train = train[fold_of != 0].reset_index(drop=True)
    print(f"fold 0 training rows: {len(train)} (x2 with swap augmentation)", flush=True)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for rep in range(args.repeats):
        for name, config in variants.items():
            model = LGBMModel(config)
            start = time.perf_counter()
            x, x_swapped = model._matrices(train, True, model._fit_vectorizers(train))
            x, y = model._stacked(x, x_swapped, train["label"].to_numpy())
            features = time.perf_counter() - start
            data = lgb.Dataset(x, y).construct()
            start = time.perf_counter()
            lgb.train(model.lgb_params(), data, num_boost_round=args.rounds)
            per_round = (time.perf_counter() - start) / args.rounds
            figures[name].append((features, per_round))
            print(f"  run {rep}  {name}: features {features:5.1f} s, {1000 * per_round:5.0f} ms/round "
                  f"({x.shape[1]} columns)", flush=True)
    ref = None
    for name, runs in figures.items():
        feat = statistics.median(r[0] for r in runs)
        per_round = statistics.median(r[1] for r in runs)
        ref = ref or (feat, per_round)
        print(f"{name}: median features {feat:.1f} s, {1000 * per_round:.0f} ms/round "
              f"(x{feat / ref[0]:.2f} and x{per_round / ref[1]:.2f} of params.yaml)")


if __name__ == "__main__":
    main()
