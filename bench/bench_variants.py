"""Settings of one base model side by side: prompt-grouped OOF log loss and accuracy beside the class prior,
and fold times, one row per variant of params.yaml's section for the model, all in one process.

    .venv/bin/python bench/bench_variants.py --model llm "" "train.epochs=0" "max_train_rows=0"
    .venv/bin/python bench/bench_variants.py --model lgbm "" "vectorizer.max_features=3000"
    .venv/bin/python bench/bench_variants.py --csv artifacts/demo/demo_train.csv "" "pooling=last"

The variants share one run cache (ensemble.core.cache): LLM variants with the same backbone settings
(base_model, num_layers, lora_layers, pooling, quantization) share the frozen-layer states, so the first
of them pays the frozen pass (its fold 0 is slow) and later ones time only their probe, fine-tuning,
calibration and top-layer inference. Put the variant whose full cost you want first, or run it alone.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, oof_figures, parse_sets  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--model", default="llm", help="a registered model (its params.yaml section is the base)")
    ap.add_argument("variants", nargs="*", default=[""], help='space-separated key=value overrides; "" = params.yaml')
    args = ap.parse_args()
    from ensemble.core.cache import RunCache
    from ensemble.core.config import load_params
    from ensemble.core.data import read_battles

    base = load_params(ROOT / "params.yaml").get(args.model, {})
    frame = read_battles(args.csv)
    cache = RunCache()
    rows = []
    for variant in args.variants:
        config = parse_sets(shlex.split(variant) + args.set, base)
        out = args.artifacts / "variants" / (variant.replace(" ", "_").replace("=", "-") or "default")
        shutil.rmtree(out, ignore_errors=True)
        fig = oof_figures(args.model, frame, config, args.folds, args.seed, out, cache)
        rows.append((variant or "(params.yaml)", fig))
        print(f"{variant or '(params.yaml)'}: {fig}", flush=True)
    print(f"\n{args.csv.name}: {len(frame)} battles, {args.folds} prompt-grouped folds")
    print(f"{args.model} {'variant':<44}{'oof':>8}{'acc':>8}{'prior':>8}{'stage s':>9}  fit s per fold")
    for name, fig in rows:
        print(f"{name:<49}{fig['oof_logloss']:>8.4f}{fig['oof_accuracy']:>8.4f}{fig['prior_logloss']:>8.4f}"
              f"{fig['stage_wall_s']:>9.1f}  {fig['fit_s_per_fold']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
