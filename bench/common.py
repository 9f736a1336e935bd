"""Pieces the model benchmarks share."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def oof_figures(name: str, frame, config: dict, n_folds: int, seed: int, artifacts: Path, cache=None) -> dict:
    """5-fold prompt-grouped OOF run of one base model: its log loss beside a prior fitted per fold."""
    import pandas as pd

    from ensemble import TARGETS
    from ensemble.core.folds import attach_folds, make_folds
    from ensemble.core.metrics import accuracy, log_loss
    from ensemble.pipeline.oof import run_oof

    folds = make_folds(frame, n_folds, seed)
    start = time.perf_counter()
    run = run_oof(name, config, frame, folds, artifacts, cache=cache)
    wall = time.perf_counter() - start
    oof = pd.read_parquet(artifacts / "oof" / f"{name}.parquet")
    labels = frame["label"].to_numpy()
    proba = oof[list(TARGETS)].to_numpy()
    fold_of = attach_folds(frame, folds)
    prior = np.zeros_like(proba)
    per_fold = {}
    for k in range(n_folds):
        va = fold_of == k
        prior[va] = np.bincount(labels[~va], minlength=3) / (~va).sum()  # prior of the training folds
        per_fold[k] = round(log_loss(labels[va], proba[va]), 4)
    fits = [v for v in run["fit_seconds"].values() if v is not None]
    return {"oof_logloss": round(log_loss(labels, proba), 4), "prior_logloss": round(log_loss(labels, prior), 4),
            "per_fold": per_fold, "oof_accuracy": round(accuracy(labels, proba), 4),
            "stage_wall_s": round(wall, 1), "fit_s_per_fold": [round(v, 1) for v in fits],
            "oof_path": str(artifacts / "oof" / f"{name}.parquet")}


def parse_sets(items: list[str], base: dict | None = None) -> dict:
    """--set a.b=value (YAML value) -> nested dict; applied on a copy of `base` when given."""
    import copy

    import yaml

    out: dict = copy.deepcopy(base) if base else {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, last = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    return out


ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "pandalm_999.csv"


def add_common_args(ap) -> None:
    """The options every model benchmark takes: data, where OOF artifacts go, folds, overrides."""
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "bench" / "out" / "pandalm")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", default=[], help="config override key=value (dotted for train.*)")
