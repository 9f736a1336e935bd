"""Does teacher-to-student pay? Side by side in one run on PandaLM (prompt-grouped 5 folds), per student:

    alone                      hard labels (the student as the pipeline trains it today)
    distilled, nested          soft labels from the blend of the other models, each student fold's teachers
                               fitted without that fold's rows (honest: ensemble.pipeline.distill)
    distilled, leaky           the same teachers' plain OOF predictions (the competitions' practice):
                               its OOF score is optimistic, labelled so
    half labelled, alone       half of the prompts labelled, hard labels
    half labelled + pseudo     the other half's battles given unlabelled, labelled by the teachers' fold
                               models; scored on the labelled half only, as the row above
    alone, paired swaps        transformer students: swap_augment: paired

Every row is an OOF score on rows nothing in that row was fitted or chosen on, except the leaky one. The
"vs alone" interval is a prompt-level paired bootstrap of the log-loss difference (negative: better).

    .venv/bin/python bench/bench_distill.py                                  # lgbm and dual_tower (~25 min, 2 cores)
    .venv/bin/python bench/bench_distill.py --models lgbm dual_tower llm --students llm   # the LLM as student

The model sections are params.yaml's with profiles/real-cpu.yaml laid over (--profile '' for params.yaml
alone). An LLM teacher costs folds x (folds - 1) LLM fits in the nested mode (20 on 5 folds).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import DEFAULT_CSV, parse_sets  # noqa: E402


def sections(models: list[str], profile: str, sets: list[str]) -> dict:
    import yaml

    from ensemble.core.config import load_params

    params = load_params(ROOT / "params.yaml")
    overlay = yaml.safe_load((ROOT / profile).read_text()) if profile else {}
    out = {}
    for name in models:
        section = copy.deepcopy(params.get(name, {}))
        for key, value in (overlay.get(name) or {}).items():
            if isinstance(value, dict):
                section.setdefault(key, {}).update(value)
            else:
                section[key] = value
        out[name] = section
    return parse_sets(sets, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "bench" / "out" / "distill")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--models", nargs="+", default=["lgbm", "dual_tower"], help="the pool: students and teachers")
    ap.add_argument("--students", nargs="+", default=None, help="default: every model of the pool")
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--profile", default="profiles/real-cpu.yaml")
    ap.add_argument("--skip", nargs="*", default=[], help="settings to leave out: leaky pseudo paired")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. lgbm.n_estimators=300")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    import pandas as pd

    from ensemble import TARGETS
    from ensemble.blend.bootstrap import paired_diff_ci
    from ensemble.core.cache import RunCache
    from ensemble.core.data import read_battles
    from ensemble.core.folds import attach_folds, make_folds, prompt_groups
    from ensemble.core.metrics import accuracy, log_loss, prior_proba, row_log_loss
    from ensemble.pipeline.oof import run_oof

    frame = read_battles(args.csv, labels=True)
    params = sections(args.models, args.profile, args.set)
    cache = RunCache()
    groups = prompt_groups(frame)
    # the pseudo-label simulation: half of the prompts labelled, the other half's battles unlabelled
    rng = np.random.default_rng(args.seed)
    labelled_groups = rng.permutation(np.unique(groups))[: len(np.unique(groups)) // 2]
    half = np.isin(groups, labelled_groups)
    labelled = frame[half].reset_index(drop=True)
    unlabelled = frame[~half].drop(columns="label").reset_index(drop=True)
    data = {"full": (frame, make_folds(frame, args.folds, args.seed)),
            "half": (labelled, make_folds(labelled, args.folds, args.seed))}
    rows, baseline = [], {}

    def run(student: str, setting: str, which: str, config: dict, **kw) -> None:
        train, folds = data[which]
        out = args.artifacts / student / setting.replace(" ", "_").replace(",", "").replace("+", "and")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        run_oof(student, config, train, folds, out, cache=cache, params=params, **kw)
        wall = time.perf_counter() - start
        oof = pd.read_parquet(out / "oof" / f"{student}.parquet").set_index("id").loc[train["id"]]
        proba, labels = oof[list(TARGETS)].to_numpy(), train["label"].to_numpy()
        fold_of = attach_folds(train, folds)
        prior = np.zeros_like(proba)
        for k in range(args.folds):
            prior[fold_of == k] = prior_proba(labels[fold_of != k], int((fold_of == k).sum()))
        losses = row_log_loss(labels, proba)
        base = baseline.setdefault((student, which), losses)
        ci = paired_diff_ci(losses, base, prompt_groups(train), 1000, args.seed) if base is not losses else None
        row = {"student": student, "setting": setting, "rows": len(train),
               "oof_logloss": round(log_loss(labels, proba), 4),
               "accuracy": round(accuracy(labels, proba), 4),
               "prior_logloss": round(log_loss(labels, prior), 4),
               "vs_alone": round(float(losses.mean() - base.mean()), 4) if ci else None, "vs_alone_ci": ci,
               "seconds": round(wall, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for student in args.students or args.models:
        teachers = [m for m in args.models if m != student]
        distill = {"teachers": teachers, "weight": args.weight, "temperature": args.temperature}
        base = params[student]
        run(student, "alone", "full", base)
        run(student, "distilled, nested", "full", {**base, "distill": {**distill, "mode": "nested"}})
        if "leaky" not in args.skip:
            run(student, "distilled, leaky (optimistic)", "full", {**base, "distill": {**distill, "mode": "leaky"}})
        if "pseudo" not in args.skip:
            run(student, "half labelled, alone", "half", base)
            run(student, "half labelled + pseudo", "half", {**base, "distill": {**distill, "weight": 0.0}},
                unlabelled=unlabelled)
        if "paired" not in args.skip and "swap_augment" in base and student != "lgbm":
            run(student, "alone, paired swaps", "full", {**base, "swap_augment": "paired"})

    print(f"\n{args.csv.name}: {len(frame)} battles, {args.folds} prompt-grouped folds; half labelled: "
          f"{len(labelled)} battles ({len(labelled_groups)} prompts) + {len(unlabelled)} unlabelled; distill weight "
          f"{args.weight}, temperature {args.temperature}; teachers: the other models of {args.models}")
    print(f"{'student':<11}{'setting':<32}{'rows':>5}{'log loss':>9}{'acc':>7}{'prior':>8}{'vs alone [95% CI]':>26}"
          f"{'s':>7}")
    for r in rows:
        ci = r["vs_alone_ci"]
        vs = f"{r['vs_alone']:+.4f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        print(f"{r['student']:<11}{r['setting']:<32}{r['rows']:>5}{r['oof_logloss']:>9.4f}{r['accuracy']:>7.3f}"
              f"{r['prior_logloss']:>8.4f}{vs:>26}{r['seconds']:>7.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
