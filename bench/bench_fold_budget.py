"""Fold budgets measured on a real set (issue 27, item 5): the LLM trained on one fold and the other models
on all five, against every model on five (a finished bench_real run of the same set and profile), and each
model's `refit_full` against its fold average on the set's locked part.

    python bench/bench_fold_budget.py run       # the stages, in bench/out/real/<set>/<profile>-fold-budget/
    python bench/bench_fold_budget.py figures   # the table, and figures.json in that folder

`run` copies the reference run's inputs (params.yaml, data/, prepared rows, folds), then for each model
runs its OOF stage twice: with `refit_full: false` (its fold-averaged locked predictions are kept aside),
then `true` (the folds are reused by their fingerprints, only the refit trains). The LLM trains fold 0
only (`llm.folds: [0]`). Each stage's seconds go to seconds.json. Then the blend stage (fitted on the
rows every model covers: fold 0's) and submit on the locked rows, once with the fold averages and once
with the refits (the blend is the same; only the base models' locked predictions differ).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble import TARGETS  # noqa: E402
from ensemble.core.data import load_battles, read_battles  # noqa: E402
from ensemble.core.metrics import log_loss  # noqa: E402

MODELS = ("lgbm", "dual_tower", "llm")
ONE_FOLD = {"llm": [0]}  # the models trained on one fold only; the others train all


def paths(dataset: str, profile: str, reference: Path | None) -> tuple[Path, Path]:
    ref = reference or Path("/work/main/bench/out/real") / dataset / profile
    return ref, ROOT / "bench" / "out" / "real" / dataset / f"{profile}-fold-budget"


def setup(ref: Path, work: Path) -> None:
    """The reference run's inputs, nothing it trained."""
    (work / "artifacts").mkdir(parents=True, exist_ok=True)
    for rel in ("data", "artifacts/prepared", "artifacts/folds.parquet"):
        src, dst = ref / rel, work / rel
        if not dst.exists():
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    pretrained = work / "artifacts" / "pretrained"
    if not pretrained.exists():
        pretrained.symlink_to(os.path.realpath(ref / "artifacts" / "pretrained"))
    (work / "teachers").mkdir(exist_ok=True)


def write_params(ref: Path, work: Path, refit: bool) -> None:
    params = yaml.safe_load((ref / "params.yaml").read_text(encoding="utf-8"))
    for name in MODELS:
        params[name]["folds"] = ONE_FOLD.get(name, "all")
        params[name]["refit_full"] = refit
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def stage(work: Path, *args: str) -> float:
    start = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    with open(work / "run.log", "a", encoding="utf-8") as log:
        log.write(f"== {' '.join(args)}\n")
        log.flush()
        result = subprocess.run([sys.executable, *args], cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise SystemExit(f"{work}: `{' '.join(args)}` exited {result.returncode}; see {work / 'run.log'}")
    return time.perf_counter() - start


def run(ref: Path, work: Path) -> None:
    setup(ref, work)
    seconds_path = work / "seconds.json"
    seconds = json.loads(seconds_path.read_text()) if seconds_path.is_file() else {}
    aside = work / "artifacts" / "test_fold_average"
    aside.mkdir(exist_ok=True)
    for refit in (False, True):
        write_params(ref, work, refit)
        for name in MODELS:
            key = f"{name}{'_refit' if refit else ''}"
            seconds[key] = stage(work, str(ROOT / "stages" / "oof.py"), name, "--out", "artifacts",
                                 "--teachers", "teachers")
            seconds_path.write_text(json.dumps(seconds, indent=1))
            if not refit:
                shutil.copy2(work / "artifacts" / "test" / f"{name}.parquet", aside / f"{name}.parquet")
    seconds["blend"] = stage(work, str(ROOT / "stages" / "blend.py"), "--artifacts", "artifacts",
                             "--metrics", "metrics.json")
    seconds_path.write_text(json.dumps(seconds, indent=1))


def locked_scores(work: Path, test_dir: Path) -> dict:
    """Each model's locked log loss from `test_dir`'s predictions, and the blend's (blend.json applied)."""
    from ensemble.pipeline.submit import blend_models, read_blender

    locked = read_battles(work / "data" / "locked.csv", drop_duplicates=False)
    labels = locked["label"].to_numpy()
    probas = {m: pd.read_parquet(test_dir / f"{m}.parquet").set_index("id").loc[locked["id"], list(TARGETS)]
              .to_numpy() for m in MODELS}
    blended = blend_models(read_blender(work / "artifacts"), locked, lambda m: probas[m])
    return {**{m: round(log_loss(labels, p), 4) for m, p in probas.items()},
            "blend": round(log_loss(labels, blended), 4)}


def figures(ref: Path, work: Path) -> dict:
    train = load_battles(work / "artifacts" / "prepared" / "train.parquet")
    budget = json.loads((work / "artifacts" / "metrics.json").read_text())
    seconds = json.loads((work / "seconds.json").read_text())
    ref_seconds = json.loads((ref / "seconds.json").read_text())
    covered = pd.read_parquet(work / "artifacts" / "oof" / "llm.parquet").set_index("id")
    covered_ids = covered.index[np.isfinite(covered[TARGETS[0]].to_numpy())]
    ref_blend = pd.read_parquet(ref / "artifacts" / "blend_oof.parquet").set_index("id").loc[covered_ids]
    labels = train.set_index("id").loc[covered_ids, "label"].to_numpy()
    timing = {m: json.loads((work / "artifacts" / "timings" / f"{m}.json").read_text())["fit_seconds"]
              for m in MODELS}
    ref_timing = {m: json.loads((ref / "artifacts" / "timings" / f"{m}.json").read_text())["fit_seconds"]
                  for m in MODELS}
    out = {
        "covered_rows": budget["covered_rows"], "training_rows": budget["training_rows"],
        "crossfit_folds": budget["crossfit_folds"],
        "blend_on_covered_rows": {
            "llm_one_fold": {"method": budget["method"], "log_loss": budget["blend"]["log_loss"],
                             "accuracy": budget["blend"]["accuracy"]},
            "all_five_folds": {"log_loss": round(log_loss(labels, ref_blend[list(TARGETS)].to_numpy()), 4),
                               "note": "the reference run's blend cross-fitted over the 5 folds, its fold-0 rows"}},
        "llm_stage_seconds": {"one_fold": round(seconds["llm"], 1), "all_five_reference": ref_seconds["llm"],
                              "refit_stage_after_fold_0": round(seconds["llm_refit"], 1)},
        "fit_seconds": {m: {"this_run": timing[m], "reference": ref_timing[m]} for m in MODELS},
        "locked": {"fold_average": locked_scores(work, work / "artifacts" / "test_fold_average"),
                   "refit_full": locked_scores(work, work / "artifacts" / "test"),
                   "reference_all_five": locked_scores(ref, ref / "artifacts" / "test")},
    }
    (work / "figures.json").write_text(json.dumps(out, indent=1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("run", "figures"))
    ap.add_argument("--dataset", default="pandalm")
    ap.add_argument("--profile", default="real-cpu")
    ap.add_argument("--reference", type=Path, help="the finished bench_real run (default: /work/main's)")
    args = ap.parse_args()
    ref, work = paths(args.dataset, args.profile, args.reference)
    if args.cmd == "run":
        run(ref, work)
    print(json.dumps(figures(ref, work), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
