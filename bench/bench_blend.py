"""Blend benchmark: every OOF file in an artifacts folder, alone and blended (fitted weights and the
seeds' fixed 0.2 LightGBM / 0.8 LLM), beside the class prior.

    python bench/bench_blend.py --artifacts bench/out/pandalm

The folder needs prepared/train.parquet (bench_lgbm.py --artifacts writes it) and oof/<model>.parquet
files made on the same rows and folds (the bench scripts all use 5 prompt-grouped folds, seed 42).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble.blend import fit_blend, read_oof  # noqa: E402
from ensemble.blend import run as run_blend  # noqa: E402
from ensemble.data import load_battles  # noqa: E402
from ensemble.metrics import log_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default=str(ROOT / "bench" / "out" / "pandalm"))
    args = ap.parse_args()
    art = Path(args.artifacts)
    models = sorted(p.stem for p in (art / "oof").glob("*.parquet"))
    known = ("lgbm", "dual_tower", "llm")
    order = [m for m in known if m in models] + [m for m in models if m not in known]
    params = {"blend": {"models": order, "fixed_weights": {"lgbm": 0.2, "llm": 0.8}}}
    run_blend(params, art)  # prints the table; writes blend.json / metrics.json into the bench folder
    train = load_battles(art / "prepared" / "train.parquet").set_index("id")
    y = train["label"].to_numpy()
    probas = dict(zip(order, read_oof(art, order, train)))
    for pair in [("lgbm", "dual_tower"), ("lgbm", "llm"), ("dual_tower", "llm")]:
        if set(pair) <= set(order):
            b = fit_blend([probas[m] for m in pair], y, list(pair))
            print(f"fitted blend {'+'.join(pair):<18} weights {[round(float(w), 3) for w in b.weights]}  "
                  f"log loss {log_loss(y, b.apply([probas[m] for m in pair])):.4f}")


if __name__ == "__main__":
    main()
