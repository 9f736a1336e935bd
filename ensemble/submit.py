"""Kaggle submission: `python -m ensemble.submit test.csv [-o submission.csv]`.

Loads every blended model's saved fold models, predicts the file (fold-averaged), applies
artifacts/blend.json (weights or stacker, whichever was fitted) and writes
id,winner_model_a,winner_model_b,winner_tie in input order. The fold models must be exactly the
folds of artifacts/folds.parquet, each still matching its fingerprint (params, training rows,
folds, code); a model brought from elsewhere is read from artifacts/test/<name>.parquet.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.blend.run import load_blender
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import load_params, to_dict
from ensemble.core.data import DataError, load_battles, read_battles
from ensemble.core.predictions import is_external, read_test_file
from ensemble.core.folds import attach_folds
from ensemble.core.io import write_csv
from ensemble.core.metrics import log_loss
from ensemble.models import create
from ensemble.models import load as load_model
from ensemble.models.base import CONFIG_FILE
from ensemble.oof import DONE_FILE, code_digest, fingerprint
from ensemble.core.predictions import proba_frame


def fold_dirs(artifacts: Path, name: str, params: dict | None = None, check_code: bool = True) -> list[Path]:
    """fold_0 .. fold_{n-1} for the n folds of artifacts/folds.parquet, each finished and trained for
    today's params, training rows, folds and code (the OOF runner's fingerprint); anything else is a
    DataError, never a silent average of stale models. `check_code=False` compares the params and
    the fold sizes only (the fingerprint hashes the ensemble code with the data, so it cannot say
    which changed)."""
    root = artifacts / "models" / name
    folds_path, train_path = artifacts / "folds.parquet", artifacts / "prepared" / "train.parquet"
    for path in (folds_path, train_path):
        if not path.is_file():
            raise DataError(f"{path}: not found; submit checks the fold models against it (run `dvc repro` first)")
    train = load_battles(train_path)
    fold_of = attach_folds(train, pd.read_parquet(folds_path))
    n = int(fold_of.max()) + 1
    found = {int(m.group(1)): d for d in root.glob("fold_*") if (m := re.fullmatch(r"fold_(\d+)", d.name))}
    missing = [k for k in range(n) if k not in found or not (found[k] / DONE_FILE).is_file()]
    if missing:
        raise DataError(f"{root}: fold model(s) {', '.join(f'fold_{k}' for k in missing)} missing or unfinished for "
                        f"the {n} folds of {folds_path}; run `dvc repro {name}`")
    extra = sorted(k for k in found if k >= n)
    if extra:
        raise DataError(f"{root}: {', '.join(f'fold_{k}' for k in extra)} beyond the {n} folds of {folds_path} "
                        f"(left by a run with more folds); delete them or rerun `dvc repro {name}`")
    params = load_params() if params is None else params  # params.yaml of the working directory
    config = json.loads(json.dumps(to_dict(create(name, params.get(name, {})).config), default=str))  # as saved
    code = code_digest() if check_code else None
    for k in range(n):
        saved, done = _saved_config(found[k]), _done(found[k])
        changed = sorted(key for key in set(config) | set(saved) if config.get(key) != saved.get(key))
        if changed:
            why = f"params {', '.join(f'{name}.{key}' for key in changed)} changed since"
        elif done.get("valid_rows", (fold_of == k).sum()) != (fold_of == k).sum():
            why = f"the folds changed ({done['valid_rows']} valid rows then, {(fold_of == k).sum()} now) since"
        elif code is not None and done.get("fingerprint") != fingerprint(name, config, train, fold_of, k, code):
            why = "the training rows, folds or ensemble code changed since"
        else:
            continue
        raise DataError(f"{root / f'fold_{k}'}: no longer matches its fingerprint: {why} it was trained; run "
                        f"`dvc repro {name}` (after a code change only: `dvc repro -f {name}`, "
                        f"or submit --skip-code-check)")
    return [found[k] for k in range(n)]


def _done(fold_dir: Path) -> dict:
    try:
        done = json.loads((fold_dir / DONE_FILE).read_text(encoding="utf-8"))
        return done if isinstance(done, dict) else {}
    except (OSError, ValueError):
        return {}


def _saved_config(fold_dir: Path) -> dict:
    try:
        return json.loads((fold_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}


def predict_model(artifacts: Path, name: str, frame: pd.DataFrame, params: dict | None = None,
                  check_code: bool = True) -> np.ndarray:
    """Fold-averaged probabilities of one base model."""
    total = np.zeros((len(frame), 3))
    dirs = fold_dirs(artifacts, name, params, check_code)
    for d in dirs:
        print(f"[{name}] predicting with {d}", file=sys.stderr)
        total += np.asarray(load_model(d).predict_proba(frame), dtype=float)
    return total / len(dirs)


def cached_test_predictions(artifacts: Path, name: str, frame: pd.DataFrame,
                            source: str = "the test file") -> np.ndarray:
    """artifacts/test/<name>.parquet (the OOF stage's fold-averaged test predictions, or a model from
    elsewhere's), checked and taken for exactly the ids of `frame`, in its order."""
    hint = (f"{name} is a model from elsewhere: write its predictions for this test file" if is_external(name)
            else f"rerun the {name} stage for this test file, or drop --reuse-test-predictions")
    return read_test_file(artifacts / "test" / f"{name}.parquet", name, frame["id"], source, hint)


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


def make_submission(test: pd.DataFrame, artifacts: Path, reuse_cached: bool = False, params: dict | None = None,
                    source: str = "the test file", check_code: bool = True) -> pd.DataFrame:
    blend_path = artifacts / "blend.json"
    if not blend_path.exists():
        raise DataError(f"{blend_path}: no blend weights; run `dvc repro` (or `python -m ensemble.blend`) first")
    try:
        saved = json.loads(blend_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{blend_path}: not valid JSON ({exc}); rerun python -m ensemble.blend") from None
    blender = load_blender(saved, blend_path)
    weights = dict(zip(blender.models, getattr(blender, "weights", np.ones(len(blender.models)))))

    def predict(name: str) -> np.ndarray:
        if weights[name] <= 0:  # a zero weight: the model does not move the blend
            return np.zeros((len(test), 3))
        if reuse_cached or is_external(name):
            return cached_test_predictions(artifacts, name, test, source)
        return predict_model(artifacts, name, test, params, check_code)

    proba = blender.apply([predict(name) for name in blender.models], test)
    sub = proba_frame(test["id"], proba)
    validate_submission(sub, list(test["id"]))
    return sub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.submit", description=__doc__)
    ap.add_argument("test_csv", help="Kaggle-format test file (id, prompt, response_a, response_b)")
    ap.add_argument("-o", "--output", default="submission.csv")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--params", default="params.yaml", help="the fold models are checked against its model sections")
    ap.add_argument("--skip-code-check", action="store_true",
                    help="accept fold models trained by other ensemble code (params and folds are still checked)")
    ap.add_argument("--reuse-test-predictions", action="store_true",
                    help="use artifacts/test/<model>.parquet (written by `dvc repro` for data.test) instead of predicting")
    args = ap.parse_args(argv)
    path = Path(args.test_csv)
    if path.suffix == ".parquet":
        test = load_battles(path)
    else:
        test = read_battles(path, labels=None, drop_duplicates=False)
    params = load_params(args.params)
    sub = make_submission(test, Path(args.artifacts), args.reuse_test_predictions, params, str(path),
                          not args.skip_code_check)
    write_csv(args.output, sub)
    print(f"wrote {args.output}: {len(sub)} rows")
    if "label" in test:
        print(f"log loss against the file's labels: {log_loss(test['label'].to_numpy(), sub[list(TARGETS)].to_numpy()):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
