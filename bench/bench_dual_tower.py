"""Dual-tower figures on any Kaggle-format CSV: 5-fold prompt-grouped OOF log loss beside the class
prior, inference throughput and peak memory with length-sorted dynamic padding vs padding every row
to max_len, and training throughput. Figures, not tests: numbers vary with the machine's load.

    .venv/bin/python bench/bench_dual_tower.py                                  # pandalm_999, demo config
    .venv/bin/python bench/bench_dual_tower.py --set max_len=96 --set train.epochs=2
    .venv/bin/python bench/bench_dual_tower.py --skip-oof --infer-rows 128      # throughput only

Inference modes: `dynamic` (the model's path: a fine-tuned encoder's towers sorted by length, padded per
batch to the batch's longest, identical towers encoded once; a frozen encoder's distinct towers encoded one
a call, unpadded), `dynamic_nodedupe` (batched by length without the dedupe, for a frozen encoder too) and
`padded` (every tower padded to max_len, row order). Memory: peak resident set size of a fresh subprocess during
predict_proba minus its RSS just before (psutil polled every 2 ms; tracemalloc misses torch's
allocations), plus the ru_maxrss high-water mark of that subprocess.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, oof_figures, parse_sets  # noqa: E402

# ----------------------------------------------------------------------------- inference child

def _child(args) -> None:
    """One timed predict_proba in a fresh process, so RSS figures belong to this mode alone."""
    import psutil

    from ensemble.core.data import read_battles
    from ensemble.models.dual_tower.model import DualTowerModel

    frame = read_battles(args.csv, verbose=False).iloc[:args.infer_rows].reset_index(drop=True)
    model = DualTowerModel.load(args.model_dir, runtime={"pad_to_max_len": args.mode == "padded"})
    if args.mode == "dynamic_nodedupe":
        import functools

        from ensemble.models.dual_tower.cache import TowerPooler

        TowerPooler.pair_pooled = functools.partialmethod(TowerPooler.pair_pooled, dedupe=False)
        model.pooler.frozen = False  # the batched path even for a frozen encoder (see the module docstring)
    model.predict_proba(frame.iloc[:4])  # warm-up: kernels, lazy imports
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, stop = [before], threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    import resource

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    model.predict_proba(frame)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    print(json.dumps({"mode": args.mode, "rows": len(frame), "seconds": seconds, "rows_per_s": len(frame) / seconds,
                      "peak_rss_delta_mb": (peak[0] - before) / 2**20,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      **token_counts(model, frame)}))


def token_counts(model, frame) -> dict:
    """Tokens the encoder actually computes (padding included) in each mode."""
    from ensemble.nn.hf import token_budget_batches

    cfg = model.config
    enc = model._encode(frame)
    towers = enc["a"] + enc["b"]

    def computed(ts) -> int:
        lengths = np.array(sorted((len(t) for t in ts), reverse=True))
        return int(sum(len(b) * lengths[b].max() for b in token_budget_batches(lengths, cfg.infer_max_tokens,
                                                                                cfg.infer_max_rows)))

    distinct = {tuple(t) for t in towers}
    return {"towers": len(towers), "distinct_towers": len(distinct), "real_tokens": sum(map(len, towers)),
            "computed_tokens": {"dynamic": sum(map(len, distinct)) if model.pooler.frozen else computed(distinct),
                                "dynamic_nodedupe": computed(towers),
                                "padded": len(towers) * cfg.max_len}}


def inference_figures(args, model_dir: Path) -> dict:
    runs: dict[str, list[dict]] = {"dynamic": [], "dynamic_nodedupe": [], "padded": []}
    for _ in range(args.repeats):
        for mode in runs:  # interleaved, so load drift hits all alike
            out = subprocess.run([sys.executable, __file__, "--child", "--mode", mode, "--model-dir", str(model_dir),
                                  "--csv", str(args.csv), "--infer-rows", str(args.infer_rows)],
                                 capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    fig = {}
    for mode, rs in runs.items():
        fig[mode] = {"rows_per_s_median": round(statistics.median(r["rows_per_s"] for r in rs), 2),
                     "rows_per_s_runs": [round(r["rows_per_s"], 2) for r in rs],
                     "peak_rss_delta_mb_median": round(statistics.median(r["peak_rss_delta_mb"] for r in rs), 1),
                     "maxrss_mb_median": round(statistics.median(r["maxrss_mb"] for r in rs), 1)}
    first = runs["dynamic"][0]
    for k in ("rows", "towers", "distinct_towers", "real_tokens", "computed_tokens"):
        fig[k] = first[k]
    for mode in ("dynamic", "dynamic_nodedupe"):
        fig[f"speedup_{mode}_over_padded"] = round(fig[mode]["rows_per_s_median"]
                                                   / fig["padded"]["rows_per_s_median"], 2)
    return fig


def training_figures(frame, config: dict, rows: int) -> dict:
    """Rows/s of the training loop alone (model load and tokenization excluded; with a frozen encoder
    the tower vectors are computed before the loop, so they are timed apart as `encode_s`)."""
    import ensemble.models.dual_tower.model as dt
    from ensemble.models.dual_tower.cache import TowerPooler

    timings = {}  # a new model has a new run cache: the encoding is timed, not a cache hit
    original, original_cached = dt.train_loop, TowerPooler.frozen_pooled

    def cached(self, enc):
        start = time.perf_counter()
        out = original_cached(self, enc)
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - start
        return out

    def timed(*a, **k):
        start = time.perf_counter()
        result = original(*a, **k)
        timings["loop"], timings["steps"] = time.perf_counter() - start, result.steps
        return result

    dt.train_loop, TowerPooler.frozen_pooled = timed, cached
    try:
        model = dt.DualTowerModel(config)
        sample = frame.iloc[:rows].reset_index(drop=True)
        start = time.perf_counter()
        model.fit(sample, None)
        fit = time.perf_counter() - start
    finally:
        dt.train_loop, TowerPooler.frozen_pooled = original, original_cached
    cfg = model.config.train
    copies = 2 if model.config.swap_augment else 1
    items = min(len(sample) * copies * cfg.epochs, timings["steps"] * cfg.batch_size * cfg.grad_accum)
    return {"freeze_layers": model.config.freeze_layers, "max_len": model.config.max_len,
            "battles": len(sample), "items_trained": int(items), "loop_s": round(timings["loop"], 1),
            "encode_s": round(timings.get("encode", 0.0), 1),
            "items_per_s": round(items / timings["loop"], 2),
            "battles_per_s": round(items / copies / timings["loop"], 2),
            "battles_per_s_incl_encode": round(len(sample) / (timings["loop"] + timings.get("encode", 0.0)), 2),
            "fit_wall_s": round(fit, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--infer-rows", type=int, default=256, help="rows for the inference comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-rows", type=int, default=128, help="battles for the training-throughput run")
    ap.add_argument("--finetune-steps", type=int, default=4,
                    help="also time this many fine-tuning steps (freeze_layers=0); 0 = skip")
    ap.add_argument("--skip-oof", action="store_true", help="reuse the fold-0 model already under --artifacts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)

    from ensemble.core.data import read_battles

    config = parse_sets(args.set)
    frame = read_battles(args.csv)
    report = {"csv": str(args.csv), "rows": len(frame), "config_overrides": config,
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if not args.skip_oof:
        report["oof"] = oof_figures("dual_tower", frame, config, args.folds, args.seed, args.artifacts)
        print(json.dumps(report["oof"], indent=1), flush=True)
    model_dir = args.artifacts / "models" / "dual_tower" / "fold_0"
    if not model_dir.exists():
        sys.exit(f"{model_dir}: no trained fold model; run without --skip-oof first")
    report["inference"] = inference_figures(args, model_dir)
    print(json.dumps(report["inference"], indent=1), flush=True)
    report["training"] = training_figures(frame, config, args.train_rows)
    print(json.dumps(report["training"], indent=1), flush=True)
    if args.finetune_steps:
        tuned = {**config, "freeze_layers": 0,
                 "train": {**config.get("train", {}), "epochs": 1, "max_steps": args.finetune_steps, "patience": 0}}
        report["training_finetune"] = training_figures(frame, tuned, args.train_rows)
        print(json.dumps(report["training_finetune"], indent=1), flush=True)
    out = args.artifacts / "bench_dual_tower.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
