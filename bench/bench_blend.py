"""Blend benchmark: every OOF file in an artifacts folder, alone and blended (every blender cross-fitted,
the fitted one in-sample too, prompt-bootstrap intervals, the seeds' fixed 0.2 LightGBM / 0.8 LLM), beside
the class prior; then each pair of models, cross-fitted by every blender; then what choosing costs: the
nested `select` cross-fitted with different candidate lists.

    python bench/bench_blend.py --artifacts bench/out/pandalm
    python bench/bench_blend.py --artifacts RUN/artifacts --method stack
    python bench/bench_blend.py --synthetic 57000 --repeat 3   # the blend stage's seconds at Kaggle scale

The folder needs prepared/train.parquet (bench_lgbm.py --artifacts writes it) and oof/<model>.parquet
files made on the same rows and folds (the bench scripts all use 5 prompt-grouped folds, seed 42).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

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
from ensemble.core.predictions import proba_frame  # noqa: E402

#: the synthetic set's models: (name, how much of the planted signal each sees, its own noise)
SYNTHETIC_MODELS = (("lgbm", 0.8, 0.6), ("dual_tower", 0.6, 0.8), ("llm", 1.0, 0.5))

#: candidate lists whose nested choice is cross-fitted (the cost of choosing among near-equals)
SELECTIONS = (["prior", "greedy"], ["prior", "weights"], ["prior", "greedy", "weights"],
              ["prior", "greedy", "stack"], ["prior", "best", "weights", "greedy", "stack"])


def synthetic_artifacts(folder: Path, rows: int, n_folds: int = 5, seed: int = 0) -> None:
    """An artifacts folder the blend stage reads: prepared/train.parquet (battles asking ~0.7 x rows
    prompts, 2% with identical answers, 1% with an empty one), folds.parquet (prompt-grouped) and
    oof/<model>.parquet for SYNTHETIC_MODELS: softmax of the planted logits, each model seeing a share
    of them plus noise of its own."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, int(0.7 * rows), rows)
    signal = rng.normal(0.0, 1.0, rows)  # > 0: A is better
    len_a, len_b = rng.integers(1, 60, rows), rng.integers(1, 60, rows)
    logits = np.column_stack([signal, -signal, np.full(rows, -0.3)])
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (rng.random(rows)[:, None] > truth.cumsum(axis=1)).sum(axis=1)
    kind = rng.random(rows)
    text_a = [f"answer {'a' * n}" for n in len_a]
    text_b = [text_a[i] if kind[i] < 0.02 else "" if kind[i] < 0.03 else f"reply {'b' * n}"
              for i, n in enumerate(len_b)]
    ids = [str(i) for i in range(rows)]
    train = pd.DataFrame({"id": ids, "prompt": [[f"question {g}"] for g in prompt],
                          "response_a": [[t] for t in text_a], "response_b": [[t] for t in text_b],
                          "label": labels})
    fold_of = np.unique(prompt, return_inverse=True)[1] % n_folds  # whole prompts in one fold
    (folder / "prepared").mkdir(parents=True, exist_ok=True)
    (folder / "oof").mkdir(exist_ok=True)
    train.to_parquet(folder / "prepared" / "train.parquet", index=False)
    pd.DataFrame({"id": ids, "fold": fold_of}).to_parquet(folder / "folds.parquet", index=False)
    for name, share, noise in SYNTHETIC_MODELS:
        z = share * logits + rng.normal(0.0, noise, (rows, 3))
        proba = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        proba_frame(ids, proba, fold_of).to_parquet(folder / "oof" / f"{name}.parquet", index=False)


def time_synthetic(rows: int, repeat: int, method: str) -> None:
    """The blend stage (params.yaml's defaults: select, 1000 bootstrap resamples) on `rows` synthetic
    rows, `repeat` times: the seconds of each run and their median."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        synthetic_artifacts(folder, rows)
        params = {"blend": {"models": [m for m, _, _ in SYNTHETIC_MODELS]}}
        seconds = []
        for _ in range(repeat):
            start = time.perf_counter()
            run_blend(params, folder, method=method, metrics_path=None)
            seconds.append(time.perf_counter() - start)
        print(f"blend stage, {rows} synthetic rows x {len(SYNTHETIC_MODELS)} models, method {method}: "
              f"{', '.join(f'{s:.1f}' for s in seconds)} s; median {np.median(seconds):.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default=str(ROOT / "bench" / "out" / "pandalm"))
    ap.add_argument("--method", default="select", choices=list(BLENDERS))
    ap.add_argument("--synthetic", type=int, metavar="ROWS", help="time the blend stage on ROWS synthetic rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs of --synthetic (the median is printed)")
    args = ap.parse_args()
    if args.synthetic:
        time_synthetic(args.synthetic, args.repeat, args.method)
        return
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
