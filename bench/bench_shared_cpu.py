"""A torch stage on a CPU another process shares: LLM fit time alone, beside a busy Python loop and
beside another torch job, with OpenMP's default wait policy (threads spin at every barrier) and with
the PASSIVE policy the package now sets itself. All six cells in one run, each the median of
--repeats child processes.

    .venv/bin/python bench/bench_shared_cpu.py            # SmolLM2 from artifacts/pretrained/smollm2
    .venv/bin/python bench/bench_shared_cpu.py --repeats 5

The child fits the real LLM (4-bit, LoRA on its top layer) on 64 demo battles: one frozen pass and
8 LoRA steps, the same kernels as a demo fold at a tenth of the rows.
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

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import pandas as pd
from ensemble.core.data import load_battles
from ensemble.models.llm import LLMModel
frame = load_battles(sys.argv[1]).iloc[:64].reset_index(drop=True)
model = LLMModel({"base_model": sys.argv[2], "num_layers": 4, "lora_layers": 1, "max_len": 128, "calib_frac": 0,
                  "max_train_rows": 64, "probe_c": [0.001], "train": {"batch_size": 8, "epochs": 1}})
start = time.perf_counter()
model.fit(frame)
print(json.dumps({"fit_s": time.perf_counter() - start}))
"""


def run_child(policy: str | None, data: str, base: str) -> float:
    env = {**os.environ, "ENSEMBLE_PROGRESS": "log", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy  # "" = libgomp's own default (the package's setdefault keeps it)
    out = subprocess.run([sys.executable, "-c", CHILD, data, base], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])["fit_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "artifacts" / "prepared" / "train.parquet"))
    ap.add_argument("--base", default=str(ROOT / "artifacts" / "pretrained" / "smollm2"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    neighbours = {
        "alone": None,
        "beside a busy Python loop": [sys.executable, "-c", "while True: pass"],  # one core spinning
        # a second OpenMP job (another torch stage, a test run) with the default spinning policy
        "beside another torch job": [sys.executable, "-c", "import torch\ntorch.set_num_threads(2)\n"
                                     "a = torch.randn(192, 192)\nwhile True: a @ a"],
    }
    cells = {}
    for neighbour, cmd in neighbours.items():
        busy = None
        if cmd is not None:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            busy = subprocess.Popen(cmd, env=env)
            time.sleep(2)
        try:
            for name, policy in (("OpenMP default", ""), ("PASSIVE (package default)", None)):
                times = [run_child(policy, args.data, args.base) for _ in range(args.repeats)]
                cells[(neighbour, name)] = statistics.median(times)
                print(f"{neighbour:<26} {name:<26} fit median {cells[(neighbour, name)]:7.1f} s "
                      f"(runs: {', '.join(f'{t:.1f}' for t in times)})", flush=True)
        finally:
            if busy is not None:
                busy.kill()
    for neighbour in list(neighbours)[1:]:
        for name in ("OpenMP default", "PASSIVE (package default)"):
            ratio = cells[(neighbour, name)] / cells[("alone", name)]
            print(f"{name:<26} {neighbour}: {ratio:.1f}x the time alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
