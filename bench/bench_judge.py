"""ensemble.Judge on a finished run: Judge.load time, the latency of one battle and the time per battle of
batches, with the LLM's fold models averaged (K passes) and merged into one (`llm.merge_folds`). Each repeat
is a fresh process (load time includes the imports, as a service's start would).

    .venv/bin/python bench/bench_judge.py --artifacts artifacts --params params.yaml [--repeats 3] [--calls 20]
        [--batch 64] [--batches 3] [--merge-folds both|on|off]

The battles are the run's own (artifacts/prepared/test.parquet, else train.parquet), a different one for every
call (the Judge keeps no per-battle cache between calls either). Imports: the modules of the models the blend
uses, timed apart from Judge.load (the fold checks, the fold models, one warm-up battle, and the libraries a
model imports on first use: transformers, peft); "load again" is a second Judge.load in the same process, every
library imported. A service's start costs imports + Judge.load. One battle: the median of --calls calls after
one warm-up call; a batch: --batches batches of --batch battles, time per battle. The table gives min / median /
max over the repeats. Targets on 2 cores (a full demo run): imports + load <= 20 s, one battle <= 1 s merged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(artifacts: str, params: str, merged: bool, calls: int, batch: int, batches: int) -> dict:
    """In a fresh process: import the used models' libraries, load a Judge, time single battles and batches."""
    t0 = time.perf_counter()
    import pandas as pd

    from ensemble import Judge
    from ensemble.core.config import load_params
    from ensemble.core.data import load_battles
    from ensemble.models import is_registered, model_class
    from ensemble.pipeline.submit import read_blender

    settings = load_params(params)
    if "llm" in settings:
        settings["llm"] = {**settings["llm"], "merge_folds": merged}
    for name in read_blender(Path(artifacts)).used_models():  # their libraries (torch, LightGBM): timed apart
        if is_registered(name):
            model_class(name)
    import_s, t1 = time.perf_counter() - t0, time.perf_counter()
    judge = Judge.load(artifacts, settings)
    load_s, t2 = time.perf_counter() - t1, time.perf_counter()
    judge = Judge.load(artifacts, settings)  # again, every library imported: the checks, the folds, the warm-up
    again_s = time.perf_counter() - t2
    prepared = Path(artifacts) / "prepared"
    source = prepared / "test.parquet" if (prepared / "test.parquet").is_file() else prepared / "train.parquet"
    rows = load_battles(source)
    need = 1 + calls + batch * batches
    rows = pd.concat([rows] * (need // len(rows) + 1), ignore_index=True).iloc[:need]  # cycled if too few
    texts = rows[["prompt", "response_a", "response_b"]]
    judge.predict(*texts.iloc[0])  # warm-up call
    single = []
    for i in range(1, 1 + calls):
        start = time.perf_counter()
        judge.predict(*texts.iloc[i])
        single.append(time.perf_counter() - start)
    per_battle = []
    for b in range(batches):
        chunk = texts.iloc[1 + calls + b * batch: 1 + calls + (b + 1) * batch].reset_index(drop=True)
        start = time.perf_counter()
        judge.predict_frame(chunk)
        per_battle.append((time.perf_counter() - start) / len(chunk))
    models = {name: len(folds) for name, folds in judge.models.items()}
    return {"import_s": import_s, "load_s": load_s, "again_s": again_s, "one_s": statistics.median(single),
            "batch_s": statistics.median(per_battle), "models": models, "source": str(source)}


def run_child(args: argparse.Namespace, merged: bool) -> dict:
    spec = json.dumps({"artifacts": str(args.artifacts.resolve()), "params": str(args.params.resolve()),
                       "merged": merged, "calls": args.calls, "batch": args.batch, "batches": args.batches})
    proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True,
                          cwd=args.root)
    if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float], scale: float = 1.0) -> str:
    return " / ".join(f"{v * scale:.3f}" for v in (min(values), statistics.median(values), max(values)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts", help="a finished run's artifacts")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--root", type=Path, help="working directory (params' relative paths); default: the parent of "
                                              "--artifacts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20, help="single-battle calls timed per repeat")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--merge-folds", choices=("both", "on", "off"), default="both")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(**json.loads(args.child))))
        return 0
    args.root = args.root or args.artifacts.resolve().parent
    paths = {"both": [False, True], "on": [True], "off": [False]}[args.merge_folds]
    print(f"run {args.artifacts}, params {args.params}; {args.repeats} repeats (fresh processes), {args.calls} "
          f"single calls, {args.batches} batches of {args.batch}; min / median / max over the repeats")
    print(f"{'llm folds':<10}{'imports s':>26}{'Judge.load s':>26}{'load again s':>26}{'one battle s':>26}"
          f"{'per battle in batch ms':>28}  models (fold models)")
    for merged in paths:
        runs = [run_child(args, merged) for _ in range(args.repeats)]
        models = ", ".join(f"{name} ({n})" for name, n in runs[0]["models"].items())
        print(f"{'merged' if merged else 'averaged':<10}{spread([r['import_s'] for r in runs]):>26}"
              f"{spread([r['load_s'] for r in runs]):>26}{spread([r['again_s'] for r in runs]):>26}"
              f"{spread([r['one_s'] for r in runs]):>26}{spread([r['batch_s'] for r in runs], 1000):>28}  {models}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
