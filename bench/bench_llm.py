"""LLM (SmolLM2 + LoRA) figures on any Kaggle-format CSV: 5-fold prompt-grouped OOF log loss beside
the class prior (the OOF parquet is kept for blending), inference throughput with length-sorted
dynamic padding vs padding every row to max_len, and peak memory of 4-bit vs 16-bit vs 32-bit
weights. Figures, not tests: numbers move with the machine's load.

    .venv/bin/python bench/bench_llm.py                                 # pandalm_999, demo config
    .venv/bin/python bench/bench_llm.py --set max_train_rows=320 --set num_layers=8
    .venv/bin/python bench/bench_llm.py --skip-oof --infer-rows 128      # throughput + memory only

Throughput: fresh subprocesses load fold 0 and time predict_proba on the same rows, dynamic and
padded interleaved, median of --repeats; --infer-max-len overrides max_len at load time (LoRA does
not depend on it), since the gain depends on how far rows fall short of max_len.
Memory: one subprocess per quantization loads the base model with all layers and predicts a few
rows. Peak = VmHWM of /proc/self/status, reset through /proc/self/clear_refs after the imports
(ru_maxrss is useless here: a child inherits its parent's high-water mark through fork+exec);
the RSS after loading is also shown after malloc_trim, since freed quantization buffers stay in
the heap otherwise, and the model's own weight bytes (get_memory_footprint).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, oof_figures, parse_sets  # noqa: E402

NAME = "llm"


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _malloc_trim() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------- throughput child

def _throughput_child(args) -> dict:
    from ensemble.core.data import read_battles
    from ensemble.models.llm.model import LLMModel

    frame = read_battles(args.csv, verbose=False).iloc[:args.infer_rows].reset_index(drop=True)
    model = LLMModel.load(args.model_dir, runtime={"pad_to_max_len": args.mode == "padded"})
    if args.max_len:  # inference at another length than trained: a benchmark's liberty, not a run-time key
        model.config.max_len = args.max_len
    model.predict_proba(frame.iloc[:4])  # warm-up: replica build, kernels, lazy imports
    start = time.perf_counter()
    model.predict_proba(frame)
    seconds = time.perf_counter() - start
    enc = model._encoder().encode_frame(frame, swapped=model.config.swap_tta)
    seqs = enc.ids + (enc.swap_ids or [])
    real = sum(map(len, seqs))
    computed = len(seqs) * model.config.max_len if args.mode == "padded" else None
    if computed is None:  # what the dynamic batches actually pad to
        from ensemble.nn.hf import token_budget_batches

        lengths = np.array([len(x) for x in enc.ids])
        if enc.swap_ids:
            lengths = np.maximum(lengths, [len(x) for x in enc.swap_ids])
        batches = token_budget_batches(lengths, model.config.infer_max_tokens, model.config.infer_max_rows)
        computed = (2 if enc.swap_ids else 1) * sum(len(b) * int(lengths[b].max()) for b in batches)
    return {"mode": args.mode, "rows": len(frame), "sequences": len(seqs), "seconds": seconds,
            "rows_per_s": len(frame) / seconds, "real_tokens_per_s": real / seconds,
            "real_tokens": real, "computed_tokens": computed}


def throughput_figures(args, model_dir: Path) -> dict:
    runs: dict[str, list[dict]] = {"dynamic": [], "padded": []}
    for _ in range(args.repeats):
        for mode in ("dynamic", "padded"):  # interleaved, so load drift hits both alike
            runs[mode].append(_run_child(["--child", "throughput", "--mode", mode, "--model-dir", str(model_dir),
                                          "--csv", str(args.csv), "--infer-rows", str(args.infer_rows),
                                          "--max-len", str(args.infer_max_len or 0)]))
    fig: dict = {}
    for mode, rs in runs.items():
        fig[mode] = {"rows_per_s_median": round(statistics.median(r["rows_per_s"] for r in rs), 2),
                     "real_tokens_per_s_median": round(statistics.median(r["real_tokens_per_s"] for r in rs), 1),
                     "rows_per_s_runs": [round(r["rows_per_s"], 2) for r in rs],
                     "computed_tokens": rs[0]["computed_tokens"]}
    fig["max_len"] = args.infer_max_len or "as trained"
    fig["rows"], fig["sequences_incl_swap_tta"] = runs["dynamic"][0]["rows"], runs["dynamic"][0]["sequences"]
    fig["real_tokens"] = runs["dynamic"][0]["real_tokens"]
    fig["speedup_dynamic_over_padded"] = round(fig["dynamic"]["rows_per_s_median"]
                                               / fig["padded"]["rows_per_s_median"], 2)
    return fig


# ----------------------------------------------------------------------------- memory child

def _memory_child(args) -> dict:
    import bitsandbytes  # noqa: F401  (imported before the baseline in every mode: same interpreter cost)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from ensemble.core.data import read_battles
    from ensemble.models.llm.backbone import base_path
    from ensemble.models.llm.model import LLMModel
    from ensemble.nn.hf import load_tokenizer

    quant, dtype = args.mode.split(":")
    frame = read_battles(args.csv, verbose=False).iloc[:args.infer_rows].reset_index(drop=True)
    model = LLMModel({"base_model": args.base_model, "quantization": quant, "compute_dtype": dtype,
                      "num_layers": 0, "max_len": args.max_len, "swap_tta": False})
    model.tokenizer = load_tokenizer(base_path(model.config))
    baseline = _rss_mb()
    _reset_hwm()
    start = time.perf_counter()
    net = model._build_replica(torch.device("cpu"))
    load_s = time.perf_counter() - start
    after_load, peak_load = _rss_mb(), _hwm_mb()
    _malloc_trim()
    trimmed = _rss_mb()
    model._replicas.put(torch.device("cpu"), net)
    start = time.perf_counter()
    model.predict_proba(frame)
    predict_s = time.perf_counter() - start
    return {"mode": args.mode, "weights_mb": round(net.get_memory_footprint() / 2**20, 1),
            "rss_before_load_mb": round(baseline), "rss_after_load_mb": round(after_load),
            "rss_after_load_trimmed_mb": round(trimmed), "peak_rss_load_mb": round(peak_load),
            "peak_rss_load_and_predict_mb": round(_hwm_mb()),
            "peak_minus_baseline_mb": round(_hwm_mb() - baseline), "load_s": round(load_s, 1),
            "predict_rows": len(frame), "predict_max_len": args.max_len, "predict_s": round(predict_s, 2)}


def memory_figures(args, base_model: str) -> dict:
    out = {}
    for mode in ("4bit:fp32", "none:bf16", "none:fp32"):
        out[mode] = _run_child(["--child", "memory", "--mode", mode, "--base-model", base_model, "--csv", str(args.csv),
                                "--infer-rows", str(args.memory_rows), "--max-len", str(args.memory_max_len)])
        print(json.dumps(out[mode]), flush=True)
    return out


def _run_child(extra: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--infer-rows", type=int, default=128, help="battles for the throughput comparison")
    ap.add_argument("--infer-max-len", type=int, default=512,
                    help="max_len for the throughput comparison (0 = the fold's own)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-rows", type=int, default=16, help="battles predicted in each memory child")
    ap.add_argument("--memory-max-len", type=int, default=256)
    ap.add_argument("--skip-oof", action="store_true", help="reuse the fold-0 model already under --artifacts")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child", choices=["throughput", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--base-model", help=argparse.SUPPRESS)
    ap.add_argument("--max-len", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = (_throughput_child if args.child == "throughput" else _memory_child)(args)
        print(json.dumps(result))
        return

    from ensemble.core.data import read_battles
    from ensemble.models.llm.model import LLMModel

    args.csv, args.artifacts = args.csv.resolve(), args.artifacts.resolve()  # before the chdir below
    os.chdir(ROOT)  # the default base_model (artifacts/pretrained/smollm2) is relative to the project
    args.artifacts.mkdir(parents=True, exist_ok=True)
    config = parse_sets(args.set)
    resolved = LLMModel(config).config
    frame = read_battles(args.csv)
    report = {"csv": str(args.csv), "rows": len(frame), "config_overrides": config,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "torch_threads": _threads(),
              "loadavg_start": os.getloadavg()}
    start = time.perf_counter()
    if not args.skip_oof:
        report["oof"] = oof_figures(NAME, frame, config, args.folds, args.seed, args.artifacts)
        print(json.dumps(report["oof"], indent=1), flush=True)
    model_dir = args.artifacts / "models" / NAME / "fold_0"
    if not model_dir.exists():
        sys.exit(f"{model_dir}: no trained fold model; run without --skip-oof first")
    key = f"throughput_max_len_{args.infer_max_len or resolved.max_len}"
    report[key] = throughput_figures(args, model_dir)
    print(json.dumps(report[key], indent=1), flush=True)
    if not args.skip_memory:
        report["memory"] = memory_figures(args, resolved.base_model)
    report["wall_s"], report["loadavg_end"] = round(time.perf_counter() - start, 1), os.getloadavg()
    out = args.artifacts / "bench_llm.json"
    if out.exists():  # a partial rerun (--skip-oof/--skip-memory) keeps the other figures
        earlier = json.loads(out.read_text(encoding="utf-8"))
        report = {**{k: v for k, v in earlier.items() if k not in report}, **report}
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
