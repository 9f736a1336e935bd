"""Blend benchmark: every OOF file in an artifacts folder, alone and blended (every blender cross-fitted,
the fitted one in-sample too, prompt-bootstrap intervals, the seeds' fixed 0.2 LightGBM / 0.8 LLM), beside
the class prior; then each pair of models, cross-fitted by every blender; then what choosing costs: the
nested `select` cross-fitted with different candidate lists.

    python bench/bench_blend.py --artifacts bench/out/pandalm
    python bench/bench_blend.py --artifacts RUN/artifacts --method stack

The folder needs prepared/train.parquet (bench_lgbm.py --artifacts writes it) and oof/<model>.parquet
files made on the same rows and folds (the bench scripts all use 5 prompt-grouped folds, seed 42).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble.blend import BLENDERS, create_blender  # noqa: E402
from ensemble.blend.config import BlendConfig  # noqa: E402
from ensemble.blend.crossfit import crossfit  # noqa: E402
from ensemble.blend.run import read_folds, read_oof_folds  # noqa: E402
from ensemble.blend.run import run as run_blend  # noqa: E402
from ensemble.core.config import from_dict  # noqa: E402
from ensemble.core.data import load_battles  # noqa: E402
from ensemble.core.metrics import log_loss  # noqa: E402

#: candidate lists whose nested choice is cross-fitted (the cost of choosing among near-equals)
SELECTIONS = (["prior", "greedy"], ["prior", "weights"], ["prior", "greedy", "weights"],
              ["prior", "greedy", "stack"], ["prior", "best", "weights", "greedy", "stack"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default=str(ROOT / "bench" / "out" / "pandalm"))
    ap.add_argument("--method", default="select", choices=list(BLENDERS))
    args = ap.parse_args()
    art = Path(args.artifacts)
    models = sorted(p.stem for p in (art / "oof").glob("*.parquet"))
    known = ("lgbm", "dual_tower", "llm")
    order = [m for m in known if m in models] + [m for m in models if m not in known]
    params = {"blend": {"models": order, "fixed_weights": {"lgbm": 0.2, "llm": 0.8}}}
    # prints the table; writes blend.json / metrics.json / metrics_headline.json into the bench folder
    run_blend(params, art, method=args.method, metrics_path=art / "metrics_headline.json")
    train = load_battles(art / "prepared" / "train.parquet").set_index("id")
    y, frame = train["label"].to_numpy(), train.reset_index()
    matrices, fold_of = read_oof_folds(art, order, train, read_folds(art, train))
    probas = dict(zip(order, matrices))
    cfg = BlendConfig()
    for pair in [("lgbm", "dual_tower"), ("lgbm", "llm"), ("dual_tower", "llm")]:
        if set(pair) <= set(order):
            p = [probas[m] for m in pair]
            scores = {m: log_loss(y, crossfit(lambda m=m, pair=pair: create_blender(m, list(pair), cfg),
                                              p, y, fold_of, frame))
                      for m in BLENDERS}
            print(f"pair {'+'.join(pair):<18} cross-fitted log loss "
                  + ", ".join(f"{m} {v:.4f}" for m, v in scores.items()))
    every = [probas[m] for m in order]
    for candidates in SELECTIONS:
        chosen = from_dict(BlendConfig, {"select": {"candidates": candidates}}, "blend")
        p = crossfit(lambda c=chosen: create_blender("select", order, c), every, y, fold_of, frame)
        print(f"select among {', '.join(candidates):<40} cross-fitted log loss {log_loss(y, p):.4f}, "
              f"accuracy {(p.argmax(1) == y).mean():.4f}")


if __name__ == "__main__":
    main()
