"""Submission at Kaggle scale: predict a test file of battles resampled from the real rows with a finished run's
fold models, per model, each in its own process (wall time and peak memory are its own): the K fold models
one after the other (what submit does) and, for the LLM, the folds merged into one (`llm.merge_folds`).

    .venv/bin/python bench/bench_submit.py --run . [--n 25000] [--n-slow 2000] [--models lgbm dual_tower llm]
    .venv/bin/python bench/bench_submit.py --run RUN --test labelled.csv   # + each path's log loss on its labels

`--n-slow` battles (default 2000) for the transformer models, whose CPU passes are slow: their figures are
then scaled linearly to `--n` and marked "extrapolated". The LLM line gives the tokens it read per second
(every pass counted: K folds, swapped copies): the figure an estimate for other hardware starts from, e.g.
2 x T4 = this run's tokens / (their measured tokens/s), not measured here (no GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def child(run: str, name: str, test_csv: str, merged: bool, check_code: bool = True) -> dict:
    """In a fresh process: predict `test_csv` with the run's fold models of `name`."""
    import os

    os.chdir(run)  # params paths (base models) are relative to the run's root
    from ensemble.core.config import load_params
    from ensemble.core.data import read_battles
    from ensemble.pipeline.submit import predict_model

    params = load_params(Path(run) / "params.yaml")
    frame = read_battles(test_csv, labels=None, drop_duplicates=False)
    labels = frame.pop("label").to_numpy() if "label" in frame else None
    if merged:
        params[name] = {**params.get(name, {}), "merge_folds": True}
    tokens = 0
    if name == "llm":  # what the model reads: the encoded battles' tokens, per pass
        from ensemble.models import load

        first = load(Path(run) / "artifacts" / "models" / name / "fold_0", runtime=params.get(name, {}))
        enc = first._encoder().encode_frame(frame, swapped=first.config.swap_tta)
        tokens = sum(len(x) for x in enc.ids) + sum(len(x) for x in (enc.swap_ids or []))
        folds = 1 if merged else len(list((Path(run) / "artifacts" / "models" / name).glob("fold_*")))
        tokens *= folds
    start = time.perf_counter()
    proba = predict_model(Path(run) / "artifacts", name, frame, params, check_code)
    wall = time.perf_counter() - start
    assert proba.shape == (len(frame), 3)
    scores = {}
    if labels is not None:
        from ensemble.core.metrics import accuracy, log_loss

        scores = {"log_loss": log_loss(labels, proba), "accuracy": accuracy(labels, proba)}
    return {"wall_s": wall, "rows": len(frame), "tokens": tokens, **scores,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(run: Path, name: str, test_csv: Path, merged: bool, check_code: bool) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); sys.path.insert(0, {str(ROOT)!r}); "
            f"import bench_submit as b; print(json.dumps(b.child({str(run)!r}, {name!r}, {str(test_csv)!r}, "
            f"{merged!r}, {check_code!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name}: child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT, help="a project folder with a finished run (artifacts/)")
    ap.add_argument("--n", type=int, default=25_000)
    ap.add_argument("--n-slow", type=int, default=2_000)
    ap.add_argument("--models", nargs="+", default=["lgbm", "dual_tower", "llm"])
    ap.add_argument("--test", type=Path, help="predict this file instead (labelled: log loss and accuracy too)")
    ap.add_argument("--skip-code-check", action="store_true", help="time fold models trained by other code")
    args = ap.parse_args()
    from bench_lgbm import kaggle_scale_files

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sizes = {"fast": args.n, "slow": min(args.n_slow, args.n)}
        files = {}
        for kind, n in sizes.items():
            (work / kind).mkdir()
            if args.test is None:
                kaggle_scale_files(work / kind, 10, n, seed=1)
            files[kind] = args.test.resolve() if args.test is not None else work / kind / "test.csv"
        if args.test is not None:
            sizes = {"fast": None, "slow": None}
        print(f"test battles: {args.test}" if args.test else
              f"test battles resampled from the real rows: {args.n} (transformers: {sizes['slow']}, scaled)")
        print(f"{'model':<12}{'path':<12}{'rows':>7}{'wall s':>9}{'at --n s':>10}{'rows/s':>9}{'peak MB':>9}"
              f"{'tokens/s':>10}{'log_loss':>10}{'accuracy':>10}")
        for name in args.models:
            for merged in ([False, True] if name == "llm" else [False]):
                kind = "fast" if name == "lgbm" else "slow"
                r = run_child(args.run, name, files[kind], merged, not args.skip_code_check)
                scaled = r["wall_s"] * args.n / r["rows"]
                mark = "" if kind == "fast" or args.test else " (extrapolated)"
                score = f"{r['log_loss']:>10.4f}{r['accuracy']:>10.4f}" if "log_loss" in r else ""
                tps = f"{r['tokens'] / r['wall_s']:>10.0f}" if r["tokens"] else f"{'':>10}"
                print(f"{name:<12}{'merged' if merged else 'K folds':<12}{r['rows']:>7}{r['wall_s']:>9.1f}"
                      f"{scaled:>10.0f}{r['rows'] / r['wall_s']:>9.1f}{r['peak_rss_mb']:>9.0f}{tps}{score}{mark}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
