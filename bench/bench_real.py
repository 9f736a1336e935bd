"""Headline figures from rows that chose nothing: every real dataset in ../shared/data split once, by prompt,
into a development part and a locked part; the pipeline trained on the development part (what chooses every
setting, profile and default) and scored by `submit` on the locked part.

    python bench/bench_real.py split                      # write bench/splits/<dataset>.json (never rewritten)
    python bench/bench_real.py run hh default             # prepare, folds, the three models, blend, submit
    python bench/bench_real.py run all real-cpu           # every dataset with profiles/real-cpu.yaml
    python bench/bench_real.py table [--part dev|locked]  # the figures of every finished run

The split (bench/splits/): a battle is locked when sha1(seed, its prompt key) falls in the lowest
LOCKED_SHARE of the hash range, so every battle of a prompt lands in the same part and the rule needs no
random state. Derived sets reuse their parent's split: `pandalm-noties` (PandaLM without its tie rows) and
`hh400` (HH-RLHF's first 400 lines). The demo's locked part is its generator's own test rows, with labels.

A run's stages may straddle commits (the queue of runs takes hours): each stage's commit is written to
seconds.json, and submit runs with --skip-code-check, so a commit that changes no model's computation (a
new module imported by ensemble/__init__.py, a CUDA-only path) does not void folds trained before it.

Each run lives in bench/out/real/<dataset>/<profile>/ (params.yaml, data/dev.*, data/locked.*, artifacts/):
  dev     the blend stage's cross-fitted scores on the development rows (5 prompt-grouped folds), every
          blender with its 95% interval against the class prior and against the best single model
  locked  submit's predictions of the locked rows (fold-averaged models, the blend fitted on every
          development row), against the development rows' class prior and the best single model chosen
          on the development rows, with prompt-level paired bootstrap intervals
"""

from __future__ import annotations

import argparse
import hashlib
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
DATA = ROOT.parent / "shared" / "data"
SPLITS = ROOT / "bench" / "splits"
OUT = ROOT / "bench" / "out" / "real"
LOCKED_SHARE = 0.3
SEED = 0
MODELS = ("lgbm", "dual_tower", "llm")
PROFILES = {"default": None, "real-cpu": ROOT / "profiles" / "real-cpu.yaml"}

#: dataset -> (source file, parent split, row filter over the source frame)
DATASETS = {
    "pandalm": ("pandalm_999.csv", "pandalm", None),
    "pandalm-noties": ("pandalm_999.csv", "pandalm", "no_ties"),
    "kaggle100": ("lmsys_train_first100.csv", "kaggle100", None),
    "hh": ("hh_harmless_808.jsonl", "hh", None),
    "hh400": ("hh_harmless_808.jsonl", "hh", "first_400"),
    "demo": (None, "demo", None),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_rows(source: str) -> list[str] | pd.DataFrame:
    """The source file's records as published: JSONL lines (verbatim) or the CSV's rows (text cells)."""
    path = DATA / source
    if path.suffix == ".jsonl":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def demo_frame() -> pd.DataFrame:
    """The demo of params.yaml's `demo` section, train and test rows, every row labelled."""
    from ensemble.demo import make_demo

    cfg = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["demo"]
    frame, _ = make_demo(cfg["n_train"] + cfg["n_test"], 0, cfg["seed"])
    return frame


def write_split(name: str) -> Path:
    """bench/splits/<name>.json: the locked rows of a source file, written once."""
    from ensemble.core.data import read_battles
    from ensemble.core.folds import prompt_key

    path = SPLITS / f"{name}.json"
    if path.is_file():
        return path
    if name == "demo":
        cfg = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["demo"]
        n = cfg["n_train"] + cfg["n_test"]
        split = {"source": "ensemble.demo.make_demo", "demo": cfg, "rows": n,
                 "rule": "the generator's own test rows (params demo.n_test), labelled",
                 "locked_rows": list(range(cfg["n_train"], n))}
    else:
        source = DATASETS[name][0]
        battles = read_battles(DATA / source, labels=True, drop_duplicates=False)
        rows = raw_rows(source)
        if len(battles) != len(rows):
            raise SystemExit(f"{source}: {len(battles)} battles for {len(rows)} records")
        keys = [prompt_key(p) for p in battles["prompt"]]
        cut = int(LOCKED_SHARE * 2**32)
        locked = [i for i, key in enumerate(keys)
                  if int.from_bytes(hashlib.sha1(f"{SEED}\x1f{key}".encode()).digest()[:4], "big") < cut]
        split = {"source": source, "sha256": sha256(DATA / source), "rows": len(rows), "seed": SEED,
                 "locked_share": LOCKED_SHARE,
                 "rule": "locked when the first 4 bytes of sha1(f'{seed}\\x1f{prompt_key}') < locked_share * 2**32",
                 "locked_prompts": len({keys[i] for i in locked}), "prompts": len(set(keys)),
                 "locked_rows": locked}
    SPLITS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    return path


def parts(name: str) -> tuple[object, object, str]:
    """(development rows, locked rows, file suffix) of a dataset, as records of its source file."""
    source, parent, row_filter = DATASETS[name]
    split = json.loads(write_split(parent).read_text(encoding="utf-8"))
    locked = set(split["locked_rows"])
    if parent == "demo":
        frame = demo_frame()
        keep = np.arange(len(frame))
        return frame.iloc[[i for i in keep if i not in locked]], frame.iloc[sorted(locked)], ".csv"
    if sha256(DATA / source) != split["sha256"]:
        raise SystemExit(f"{DATA / source}: changed since bench/splits/{parent}.json was written")
    rows = raw_rows(source)
    keep = list(range(len(rows)))
    if row_filter == "first_400":
        keep = keep[:400]
    elif row_filter == "no_ties":
        keep = [i for i in keep if rows.iloc[i]["winner_tie"] != "1"]
    dev = [i for i in keep if i not in locked]
    test = [i for i in keep if i in locked]
    if isinstance(rows, list):
        return [rows[i] for i in dev], [rows[i] for i in test], ".jsonl"
    return rows.iloc[dev], rows.iloc[test], ".csv"


def write_records(records, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(records, list):
        path.write_text("\n".join(records) + "\n", encoding="utf-8")
    else:
        records.to_csv(path, index=False)


def workdir(name: str, profile: str) -> Path:
    return OUT / name / profile


def write_params(work: Path, profile: str, suffix: str) -> None:
    """The run's params.yaml: the project's, the profile applied, data pointed at the two parts."""
    from ensemble.pipeline.profile import apply_profile

    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    apply_profile(PROFILES[profile], [f"data.train=data/dev{suffix}", f"data.test=data/locked{suffix}"],
                  work / "params.yaml")


def setup(name: str, profile: str) -> Path:
    """The run's folder: the two parts' files, params.yaml, the converted SmolLM2 linked in."""
    work = workdir(name, profile)
    dev, locked, suffix = parts(name)
    write_records(dev, work / "data" / f"dev{suffix}")
    write_records(locked, work / "data" / f"locked{suffix}")
    write_params(work, profile, suffix)
    pretrained = work / "artifacts" / "pretrained"
    pretrained.parent.mkdir(parents=True, exist_ok=True)
    if not pretrained.exists():
        pretrained.symlink_to(ROOT / "artifacts" / "pretrained")  # the converted SmolLM2 (make repro / convert_llm)
    (work / "teachers").mkdir(exist_ok=True)
    return work


def commit() -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def stage(work: Path, log, *args: str) -> float:
    start = time.perf_counter()
    log.write(f"== {' '.join(args)} at {commit()}\n")
    log.flush()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, *args], cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        raise SystemExit(f"{work}: `{' '.join(args)}` exited {result.returncode}; see {work / 'run.log'}")
    return time.perf_counter() - start


def run(name: str, profile: str) -> dict:
    if not (ROOT / "artifacts" / "pretrained" / "smollm2").is_dir():
        raise SystemExit("artifacts/pretrained/smollm2 missing: run `dvc repro convert_llm` first")
    work = setup(name, profile)
    suffix = ".jsonl" if (work / "data" / "dev.jsonl").is_file() else ".csv"
    seconds = {}
    with open(work / "run.log", "a", encoding="utf-8") as log:
        seconds["prepare"] = stage(work, log, str(ROOT / "stages" / "prepare.py"), "artifacts/prepared")
        seconds["folds"] = stage(work, log, str(ROOT / "stages" / "folds.py"), "artifacts/prepared/train.parquet",
                                 "artifacts/folds.parquet")
        for model in MODELS:
            seconds[model] = stage(work, log, str(ROOT / "stages" / "oof.py"), model, "--out", "artifacts",
                                   "--teachers", "teachers")
        seconds["blend"] = stage(work, log, str(ROOT / "stages" / "blend.py"), "--artifacts", "artifacts",
                                 "--metrics", "metrics.json")
        seconds["submit"] = stage(work, log, "-m", "ensemble.submit", f"data/locked{suffix}", "-o",
                                  "artifacts/submission.csv", "--artifacts", "artifacts", "--params", "params.yaml",
                                  "--reuse-test-predictions", "--skip-code-check")
    (work / "seconds.json").write_text(json.dumps({**seconds, "commit_at_end": commit()}, indent=1) + "\n",
                                       encoding="utf-8")
    print(f"{name} / {profile}: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), flush=True)
    return seconds


def blend_again(name: str, profile: str) -> None:
    """Refit the blend stage and submit from the finished models (a blender change retrains nothing)."""
    work = workdir(name, profile)
    if not all((work / "artifacts" / "test" / f"{m}.parquet").is_file() for m in MODELS):
        print(f"{name} / {profile}: no finished run to blend again", flush=True)
        return
    suffix = ".jsonl" if (work / "data" / "dev.jsonl").is_file() else ".csv"
    write_params(work, profile, suffix)
    with open(work / "run.log", "a", encoding="utf-8") as log:
        stage(work, log, str(ROOT / "stages" / "blend.py"), "--artifacts", "artifacts", "--metrics", "metrics.json")
        stage(work, log, "-m", "ensemble.submit", f"data/locked{suffix}", "-o", "artifacts/submission.csv",
              "--artifacts", "artifacts", "--params", "params.yaml", "--reuse-test-predictions", "--skip-code-check")


def locked_scores(work: Path, bootstrap: int = 1000) -> dict:
    """The submission, the development prior and the best development model on the locked rows."""
    from ensemble import TARGETS
    from ensemble.blend import create_blender
    from ensemble.blend.bootstrap import paired_diff_ci
    from ensemble.core.data import load_battles, read_battles
    from ensemble.core.folds import prompt_groups
    from ensemble.core.metrics import accuracy, log_loss, row_log_loss

    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    locked = read_battles(work / params["data"]["test"], labels=True, drop_duplicates=False,
                          side_seed=params["data"]["side_seed"])
    labels = locked["label"].to_numpy()
    ids = locked["id"].astype(str).to_numpy()
    dev_labels = load_battles(work / "artifacts" / "prepared" / "train.parquet")["label"].to_numpy()
    # the project's class prior (the `prior` blender): the development rows' frequencies, an absent class
    # (binary data: the tie) at the same floor every model and blender gives it
    prior_blender = create_blender("prior", list(MODELS)).fit([np.zeros((len(dev_labels), 3))] * len(MODELS),
                                                              dev_labels, None)
    prior = prior_blender.predict([np.zeros((len(labels), 3))] * len(MODELS), None)
    metrics = json.loads((work / "artifacts" / "metrics.json").read_text(encoding="utf-8"))
    best = metrics["blend"]["best_model"]  # chosen on the development rows

    def read(path: Path) -> np.ndarray:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        return frame.assign(id=frame["id"].astype(str)).set_index("id").loc[ids, list(TARGETS)].to_numpy()

    blend = read(work / "artifacts" / "submission.csv")
    models = {m: read(work / "artifacts" / "test" / f"{m}.parquet") for m in MODELS}
    groups = prompt_groups(locked)

    def ci(a: np.ndarray, b: np.ndarray) -> list[float]:
        return paired_diff_ci(row_log_loss(labels, a), row_log_loss(labels, b), groups, bootstrap, 0)

    out = {"rows": int(len(labels)), "class_counts": np.bincount(labels, minlength=3).tolist(),
           "prior": {"log_loss": log_loss(labels, prior), "accuracy": accuracy(labels, prior)},
           "models": {m: {"log_loss": log_loss(labels, p), "accuracy": accuracy(labels, p)} for m, p in models.items()},
           "blend": {"method": metrics["method"], "chosen": metrics["blender"]["summary"].get("chosen"),
                     "log_loss": log_loss(labels, blend), "accuracy": accuracy(labels, blend),
                     "diff_vs_prior_ci": ci(blend, prior), "best_model": best,
                     "diff_vs_best_ci": ci(blend, models[best])}}
    return out


def figures(name: str, profile: str) -> dict | None:
    work = workdir(name, profile)
    if not (work / "artifacts" / "submission.csv").is_file():
        return None
    metrics = json.loads((work / "artifacts" / "metrics.json").read_text(encoding="utf-8"))
    out = {"dev": metrics, "locked": locked_scores(work)}
    (work / "figures.json").write_text(json.dumps(out, indent=1, default=float) + "\n", encoding="utf-8")
    return out


#: the published verdict files of WeOpenML/PandaLM (data/): idx -> verdict; 1 = response 1 (A), 2 = B, 0 / "Tie" = tie
JUDGES = {"GPT-3.5-turbo (zero-shot)": ("gpt-3.5-turbo-testset-v1.json", "gpt_result"),
          "PandaLM-7B (fine-tuned judge)": ("pandalm-7b-testset-v1.json", "pandalm_result")}


def judge_verdicts(folder: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Each published judge's verdict as a label (0 A, 1 B, 2 tie; -1 unparsable, counted wrong)."""
    table = {"1": 0, "2": 1, "0": 2, "tie": 2}
    out = {}
    for name, (file, key) in JUDGES.items():
        rows = json.loads((folder / file).read_text(encoding="utf-8"))
        by_id = {str(r["idx"]): table.get(str(r[key]).strip().lower(), -1) for r in rows}
        out[name] = np.array([by_id[i] for i in ids])
    return out


def judges(folder: Path, profile: str, bootstrap: int = 1000) -> None:
    """Accuracy of the published judges and of this pipeline on PandaLM's locked rows, with the paired
    prompt-bootstrap interval of each difference (the pipeline's verdict: ensemble.core.metrics.accuracy)."""
    from ensemble import TARGETS
    from ensemble.blend.bootstrap import paired_diff_ci
    from ensemble.core.data import read_battles
    from ensemble.core.folds import prompt_groups

    work = workdir("pandalm", profile)
    params = yaml.safe_load((work / "params.yaml").read_text(encoding="utf-8"))
    locked = read_battles(work / params["data"]["test"], labels=True, drop_duplicates=False)
    labels = locked["label"].to_numpy()
    ids = locked["id"].astype(str).to_numpy()
    sub = pd.read_csv(work / "artifacts" / "submission.csv", dtype={"id": str}).set_index("id").loc[ids]
    proba = sub[list(TARGETS)].to_numpy()
    top = proba >= proba.max(axis=1, keepdims=True) - 1e-9
    ours = top[np.arange(len(labels)), labels] / top.sum(axis=1)  # per-row credit, ties of the top split
    groups = prompt_groups(locked)
    print(f"PandaLM locked part, {len(labels)} battles ({len(np.unique(groups))} prompts), profile {profile}:")
    print(f"  this pipeline (trained on the development part)   accuracy {ours.mean():.3f}")
    for name, verdict in judge_verdicts(folder, ids).items():
        right = (verdict == labels).astype(float)
        ci = paired_diff_ci(ours, right, groups, bootstrap, 0)  # mean per-row credit: ours - theirs
        print(f"  {name:<48} accuracy {right.mean():.3f}   ours - theirs {ours.mean() - right.mean():+.3f}, "
              f"95% CI [{ci[0]:+.3f}, {ci[1]:+.3f}]")


#: the candidate lists `select` was chosen among (`candidates` subcommand), simplest first
CANDIDATE_LISTS = (["prior", "stack"], ["prior", "weights", "stack"], ["prior", "best", "weights", "stack"],
                   ["prior", "greedy", "stack"], ["prior", "best", "weights", "greedy", "stack"])


def candidates() -> None:
    """select cross-fitted on every finished development part with each candidate list: what chose the
    default `blend.select.candidates` (the lowest mean of select - prior and select - best over the runs)."""
    from ensemble.blend import create_blender
    from ensemble.blend.config import BlendConfig
    from ensemble.blend.crossfit import crossfit
    from ensemble.blend.run import read_folds, read_oof_folds
    from ensemble.core.config import from_dict
    from ensemble.core.data import load_battles
    from ensemble.core.degenerate import KIND_COLUMN, kinds
    from ensemble.core.metrics import log_loss

    totals: dict[str, list[tuple[float, float]]] = {}
    for profile in PROFILES:
        for name in DATASETS:
            art = workdir(name, profile) / "artifacts"
            if not (art / "blend.json").is_file():
                continue
            train = load_battles(art / "prepared" / "train.parquet").set_index("id")
            labels = train["label"].to_numpy()
            probas, fold_of = read_oof_folds(art, list(MODELS), train, read_folds(art, train))
            frame = train.reset_index().assign(fold=fold_of)
            frame[KIND_COLUMN] = kinds(frame)
            prior = crossfit(lambda: create_blender("prior", list(MODELS), BlendConfig()), probas, labels, fold_of,
                             frame)
            best = min(log_loss(labels, p) for p in probas)
            base = log_loss(labels, prior)
            print(f"{name} / {profile}: {len(labels)} development rows, prior {base:.4f}, best model {best:.4f}")
            for cands in CANDIDATE_LISTS:
                cfg = from_dict(BlendConfig, {"select": {"candidates": cands}}, "blend")
                fits: list = []
                p = crossfit(lambda cfg=cfg: create_blender("select", list(MODELS), cfg), probas, labels, fold_of,
                             frame, fits)
                loss = log_loss(labels, p)
                key = ", ".join(cands)
                totals.setdefault(key, []).append((loss - base, loss - best))
                print(f"  [{key}]{'':<{40 - len(key)}} {loss:.4f}  - prior {loss - base:+.4f}  "
                      f"- best {loss - best:+.4f}  per fold: {', '.join(f.chosen.name for f in fits)}", flush=True)
    print("\nover the runs: mean (select - prior), worst (select - prior), mean (select - best), worst (select - best)")
    for key, diffs in totals.items():
        d = np.array(diffs)
        print(f"  [{key}]{'':<{40 - len(key)}} {d[:, 0].mean():+.4f} {d[:, 0].max():+.4f} {d[:, 1].mean():+.4f} "
              f"{d[:, 1].max():+.4f}")


def fmt_ci(v) -> str:
    return f"[{v[0]:+.3f}, {v[1]:+.3f}]" if v else ""


def dev_table(profile: str) -> list[str]:
    """Markdown: every dataset x blender cross-fitted on the development rows, beside the models."""
    lines = ["| dataset (development rows) | predictor | log loss | accuracy | vs prior, 95% CI "
             "| vs best model, 95% CI |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in DATASETS:
        f = figures(name, profile)
        if f is None:
            continue
        d = f["dev"]
        b = d["blend"]
        where = f"{name} ({d['rows']})"
        lines.append(f"| {where} | class prior | {d['prior']['log_loss']:.4f} | {d['prior']['accuracy']:.3f} | | |")
        for m, r in d["models"].items():
            at_prior = f" (prior on {r['prior_folds']}/{r['folds']} folds)" if r.get("prior_folds") else ""
            mark = " (best)" if m == b["best_model"] else ""
            lines.append(f"| | {m}{mark}{at_prior} | {r['log_loss']:.4f} | {r['accuracy']:.3f} | "
                         f"{fmt_ci(r.get('diff_vs_prior_ci'))} | |")
        for method, v in b["by_method"].items():
            label = method
            if method == d["method"]:
                per_fold = [x.get("chosen") for x in b.get("fold_summaries", [])]
                label = f"**{method}** (default; per fold: {', '.join(per_fold)})"
            lines.append(f"| | {label} | {v['log_loss']:.4f} | {v['accuracy']:.3f} | "
                         f"{fmt_ci(v.get('diff_vs_prior_ci'))} | {fmt_ci(v.get('diff_vs_best_ci'))} |")
    return lines


def locked_table() -> list[str]:
    """Markdown: submit on the locked rows, every dataset and profile."""
    lines = ["| dataset | profile | locked rows | class prior | lgbm | dual_tower | llm | blend (applied) | "
             "vs prior, 95% CI | vs best dev model, 95% CI |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in DATASETS:
        for profile in PROFILES:
            f = figures(name, profile)
            if f is None:
                continue
            lk = f["locked"]
            b = lk["blend"]
            models = " | ".join(f"{r['log_loss']:.4f} / {r['accuracy']:.3f}" for r in lk["models"].values())
            lines.append(f"| {name} | {profile} | {lk['rows']} | {lk['prior']['log_loss']:.4f} / "
                         f"{lk['prior']['accuracy']:.3f} | {models} | **{b['log_loss']:.4f}** / {b['accuracy']:.3f} "
                         f"({b.get('chosen') or b['method']}) | {fmt_ci(b['diff_vs_prior_ci'])} | "
                         f"{fmt_ci(b['diff_vs_best_ci'])} ({b['best_model']}) |")
    return lines


def table(part: str) -> None:
    if part == "locked":
        print("\n".join(locked_table()))
        return
    for profile in PROFILES:
        print(f"\n{profile}:\n")
        print("\n".join(dev_table(profile)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("split")
    sub.add_parser("candidates", help="select cross-fitted with each candidate list on every development part")
    for cmd in ("run", "reblend"):
        p = sub.add_parser(cmd)
        p.add_argument("dataset", choices=[*DATASETS, "all"])
        p.add_argument("profile", choices=[*PROFILES, "all"])
    t = sub.add_parser("table")
    t.add_argument("--part", choices=["dev", "locked"], default="locked")
    j = sub.add_parser("judges", help="PandaLM's locked rows against the published GPT-3.5 and PandaLM-7B verdicts")
    j.add_argument("folder", type=Path, help="WeOpenML/PandaLM's data/ folder (its two *-testset-v1.json files)")
    j.add_argument("--profile", choices=list(PROFILES), default="real-cpu")
    args = ap.parse_args()
    if args.cmd == "judges":
        judges(args.folder, args.profile)
        return 0
    if args.cmd == "split":
        for parent in sorted({p for _, p, _ in DATASETS.values()}):
            print(write_split(parent))
        return 0
    if args.cmd == "candidates":
        candidates()
        return 0
    if args.cmd == "table":
        table(args.part)
        return 0
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    for profile in profiles:
        for name in names:
            (run if args.cmd == "run" else blend_again)(name, profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
