"""Kaggle submission: `python -m ensemble.submit test.csv [-o submission.csv]`.

Loads every blended model's saved fold models, predicts the file (fold-averaged), applies
artifacts/blend.json and writes id,winner_model_a,winner_model_b,winner_tie in input order.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import TARGETS
from .blend import Blend
from .cli import fail_cleanly
from .data import DataError, load_battles, read_battles
from .io import write_csv
from .metrics import log_loss
from .models import load as load_model
from .oof import proba_frame


def fold_dirs(artifacts: Path, name: str) -> list[Path]:
    dirs = sorted((artifacts / "models" / name).glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    dirs = [d for d in dirs if (d / "done.json").exists()]
    if not dirs:
        raise DataError(f"{artifacts / 'models' / name}: no finished fold models for {name!r}; run `dvc repro` first")
    return dirs


def predict_model(artifacts: Path, name: str, frame: pd.DataFrame) -> np.ndarray:
    """Fold-averaged probabilities of one base model."""
    total = np.zeros((len(frame), 3))
    dirs = fold_dirs(artifacts, name)
    for d in dirs:
        print(f"[{name}] predicting with {d}", file=sys.stderr)
        total += np.asarray(load_model(d).predict_proba(frame), dtype=float)
    return total / len(dirs)


def cached_test_predictions(artifacts: Path, name: str, frame: pd.DataFrame) -> np.ndarray:
    """The OOF stage's fold-averaged test predictions, checked to be for exactly these ids."""
    path = artifacts / "test" / f"{name}.parquet"
    cached = pd.read_parquet(path).assign(id=lambda f: f["id"].astype(str))
    if list(cached["id"]) != list(frame["id"]):
        raise DataError(f"{path}: its ids differ from the test file's; rerun the {name} stage")
    return cached[list(TARGETS)].to_numpy(dtype=float)


def validate_submission(sub: pd.DataFrame, ids: list[str]) -> None:
    """Kaggle's rules; a violation is a bug here, so fail loudly before anything is written."""
    values = sub[list(TARGETS)].to_numpy()
    problems = []
    if list(sub.columns) != ["id", *TARGETS]:
        problems.append(f"columns {list(sub.columns)}")
    if list(sub["id"]) != list(ids):
        problems.append("ids differ from the input order")
    if not np.isfinite(values).all():
        problems.append("NaN/inf values")
    if (values < 0).any() or (values > 1).any():
        problems.append("values outside [0, 1]")
    if np.abs(values.sum(axis=1) - 1).max() > 1e-6:
        problems.append("rows that do not sum to 1")
    if problems:
        raise RuntimeError("invalid submission: " + "; ".join(problems))


def make_submission(test: pd.DataFrame, artifacts: Path, reuse_cached: bool = False) -> pd.DataFrame:
    blend_path = artifacts / "blend.json"
    if not blend_path.exists():
        raise DataError(f"{blend_path}: no blend weights; run `dvc repro` (or `python -m ensemble.blend`) first")
    blend = Blend.from_json(json.loads(blend_path.read_text(encoding="utf-8")))
    predict = cached_test_predictions if reuse_cached else predict_model
    probas = [predict(artifacts, name, test) if w > 0 else np.zeros((len(test), 3))
              for name, w in zip(blend.models, blend.weights)]
    proba = blend.apply(probas)
    sub = proba_frame(test["id"], proba)
    validate_submission(sub, list(test["id"]))
    return sub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.submit", description=__doc__)
    ap.add_argument("test_csv", help="Kaggle-format test file (id, prompt, response_a, response_b)")
    ap.add_argument("-o", "--output", default="submission.csv")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--reuse-test-predictions", action="store_true",
                    help="use artifacts/test/<model>.parquet (written by `dvc repro` for data.test) instead of predicting")
    args = ap.parse_args(argv)
    path = Path(args.test_csv)
    if path.suffix == ".parquet":
        test = load_battles(path)
    else:
        test = read_battles(path, labels=None, drop_duplicates=False)
    sub = make_submission(test, Path(args.artifacts), args.reuse_test_predictions)
    write_csv(args.output, sub)
    print(f"wrote {args.output}: {len(sub)} rows")
    if "label" in test:
        print(f"log loss against the file's labels: {log_loss(test['label'].to_numpy(), sub[list(TARGETS)].to_numpy()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
