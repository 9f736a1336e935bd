"""LightGBM + blender benchmark: quality and cost figures for any Kaggle-format file.

    python bench/bench_lgbm.py [--data ../shared/data/pandalm_999.csv] [--protocol pipeline|reference]
    python bench/bench_lgbm.py --kaggle-scale      # 57,477 train / 25,000 test rows resampled from real rows

Each stage runs in its own process so its wall time and peak RSS are its own. `pipeline` is this
project's protocol (exact duplicate battles dropped, prompt-grouped stratified folds);
`reference` is the shared data README's (all rows, plain stratified folds), for like-for-like
comparison with its figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]


def stage(work: Path, art: Path, name: str, protocol: str, lgbm_params: dict) -> dict:
    """Runs inside a child process; returns its figures (peak RSS is this process's)."""
    from ensemble.core.data import load_battles, read_battles, save_battles
    from ensemble.core.folds import make_folds
    from ensemble.pipeline.oof import run_oof

    start = time.perf_counter()
    if name == "prepare":
        train = read_battles(work / "train.csv", labels=True, drop_duplicates=protocol == "pipeline")
        save_battles(art / "prepared" / "train.parquet", train)
        test = work / "test.csv"
        if test.exists():
            save_battles(art / "prepared" / "test.parquet", read_battles(test, labels=False, drop_duplicates=False))
    elif name == "folds":
        train = load_battles(art / "prepared" / "train.parquet")
        if protocol == "pipeline":
            folds = make_folds(train, 5, seed=42)
        else:
            from sklearn.model_selection import StratifiedKFold
            fold = np.zeros(len(train), dtype=np.int64)
            for k, (_, va) in enumerate(StratifiedKFold(5, shuffle=True, random_state=42).split(train, train["label"])):
                fold[va] = k
            folds = pd.DataFrame({"id": train["id"], "fold": fold})
        folds.to_parquet(art / "folds.parquet")
    elif name == "lgbm":
        train = load_battles(art / "prepared" / "train.parquet")
        test_path = art / "prepared" / "test.parquet"
        test = load_battles(test_path) if test_path.exists() else None
        run_oof("lgbm", lgbm_params, train, pd.read_parquet(art / "folds.parquet"), art, test=test)
    return {"stage": name, "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_stage(work: Path, art: Path, name: str, protocol: str, lgbm_params: dict) -> dict:
    code = (f"import json,sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_lgbm as b; "
            "from pathlib import Path; "
            f"print('RESULT'+json.dumps(b.stage(Path({str(work)!r}), Path({str(art)!r}), "
            f"{name!r}, {protocol!r}, {lgbm_params!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def kaggle_scale_files(work: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Resample real rows into Kaggle-sized files. Prompt and responses come from independent random
    rows so no battle is an exact duplicate (which the pipeline would drop), while text lengths and
    styles stay real.

    Labels are synthetic, drawn to look like the arena's: class shares about 34/35/32 %, class
    prior log loss 1.098, and a signal a perfect model could only take to 0.99. The score of a
    battle is 0.2 x the log length ratio (longer answers win more often) plus 0.3 x the difference
    of a hidden per-response "quality" (random, one value per distinct response, learnable only
    through the text); ties are likelier when the scores are close. Real labels cannot come along:
    each response recurs ~50 times among the resampled battles, so a label tied to a response is
    memorised across folds and early stopping never stops (measured: 1715 rounds at lr 0.1, valid
    log loss 0.34), a task no real data set poses. For timing; quality figures come from real data.
    Prompts: the real files hold only 270 distinct prompts, while Kaggle's train.csv repeats few (its
    first 100 rows are 100 distinct prompts), so each resampled battle's prompt gets a tag that makes about
    90% of them distinct: prompt groups, and so the inner early-stopping plan, look like the real file's.
    """
    real = pd.concat([pd.read_csv(SHARED / "lmsys_train_first100.csv", dtype=str),
                      pd.read_csv(SHARED / "pandalm_999.csv", dtype=str)], ignore_index=True)
    rng = np.random.default_rng(seed)
    responses = pd.unique(pd.concat([real["response_a"], real["response_b"]]))
    quality = dict(zip(responses, rng.normal(0.0, 1.0, len(responses))))

    def sample(n, offset, labels):
        i, j, k = (rng.integers(0, len(real), n) for _ in range(3))
        tags = rng.integers(0, int(0.9 * n) + 1, n)
        prompts = [json.dumps(json.loads(p)[:-1] + [f"{(json.loads(p) or [''])[-1]} (#{t})"])
                   for p, t in zip(real["prompt"].to_numpy()[i], tags)]
        frame = pd.DataFrame({"id": np.arange(offset, offset + n).astype(str),
                              "prompt": prompts,
                              "response_a": real["response_a"].to_numpy()[j],
                              "response_b": real["response_b"].to_numpy()[k]})
        if labels:
            length = np.log1p(frame["response_a"].str.len()) - np.log1p(frame["response_b"].str.len())
            hidden = frame["response_a"].map(quality) - frame["response_b"].map(quality)
            score = (0.2 * length + 0.3 * hidden).to_numpy()
            logits = np.column_stack([score, -score, 0.3 - 0.5 * np.abs(score)])
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            label = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
            for c, col in enumerate(TARGETS):
                frame[col] = (label == c).astype(int)
        return frame

    sample(n_train, 0, True).to_csv(work / "train.csv", index=False)
    sample(n_test, 10_000_000, False).to_csv(work / "test.csv", index=False)


def blend_timing(n: int, repeats: int = 5) -> list[float]:
    from ensemble.blend import create_blender

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    probas = [rng.dirichlet(np.ones(3) * a, n) for a in (0.5, 1.0, 2.0)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        create_blender("weights", ["lgbm", "dual_tower", "llm"]).fit(probas, labels, None)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED / "pandalm_999.csv"))
    ap.add_argument("--protocol", choices=["pipeline", "reference"], default="pipeline")
    ap.add_argument("--kaggle-scale", action="store_true")
    ap.add_argument("--no-early-stopping", action="store_true",
                    help="every fold boosts all n_estimators rounds: the stage's worst-case time")
    ap.add_argument("--n-train", type=int, default=57_477)
    ap.add_argument("--n-test", type=int, default=25_000)
    ap.add_argument("--artifacts", help="keep prepared data, folds and OOF here (default: a temporary folder)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="lgbm section read from here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import lightgbm as lgb

    from ensemble.core.config import load_params
    from ensemble.core.metrics import log_loss, prior_proba

    lgbm_params = load_params(args.params).get("lgbm", {})
    if args.no_early_stopping:
        lgbm_params["early_stopping_rounds"] = 0
    with tempfile.TemporaryDirectory(prefix="bench_lgbm_") as tmp:
        work = Path(tmp)
        art = Path(args.artifacts).resolve() if args.artifacts else work / "art"
        if args.kaggle_scale:
            kaggle_scale_files(work, args.n_train, args.n_test)
            print(f"data: {args.n_train} train / {args.n_test} test rows resampled from real rows")
        else:
            (work / "train.csv").symlink_to(Path(args.data).resolve())
            print(f"data: {args.data}  protocol: {args.protocol}")
        for name in ("prepare", "folds", "lgbm"):
            r = run_stage(work, art, name, args.protocol, lgbm_params)
            print(f"stage {name:<8} {r['seconds']:8.1f} s   peak RSS {r['peak_rss_mb']:8.0f} MB", flush=True)
        fit_seconds = json.loads((art / "timings" / "lgbm.json").read_text())["fit_seconds"]
        for fold in sorted((art / "models" / "lgbm").glob("fold_*")):
            rounds = lgb.Booster(model_file=str(fold / "booster.txt")).current_iteration()
            fit = fit_seconds[fold.name.removeprefix("fold_")]
            print(f"  {fold.name}: fit {fit:6.1f} s, {rounds} boosting rounds kept")
        train = pd.read_parquet(art / "prepared" / "train.parquet", columns=["id", "label"])
        oof = pd.read_parquet(art / "oof" / "lgbm.parquet").set_index("id").loc[train["id"]]
        y = train["label"].to_numpy()
        print(f"rows {len(y)}  class prior log loss {log_loss(y, prior_proba(y, len(y))):.4f}  "
              f"LightGBM OOF log loss {log_loss(y, oof[TARGETS].to_numpy()):.4f}")
    times = blend_timing(args.n_train)
    print(f"3-model blend fit on {args.n_train} rows: median {statistics.median(times):.3f} s "
          f"over {len(times)} runs (min {min(times):.3f}, max {max(times):.3f})")


if __name__ == "__main__":
    main()
