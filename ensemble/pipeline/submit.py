"""Kaggle submission: `python -m ensemble.submit test.csv [-o submission.csv]`.

Loads every blended model's saved fold models, predicts the file (averaged over the folds it trained,
or its one refit on every training row where `<model>.refit_full` is on), applies the fitted
blender of artifacts/blend.json (whichever method fitted it) and writes
id,winner_model_a,winner_model_b,winner_tie in input order. The fold models must be exactly the folds
of artifacts/folds.parquet, each still matching its identity (params without the run-time keys,
training rows and texts, folds, the code the model declares, its libraries' versions, its pretrained
weights, its teachers: ensemble.core.fingerprint.FoldIdentity); the run-time keys
(devices, inference budgets) come from today's params. A model brought from elsewhere is read from
artifacts/test/<name>.parquet.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.blend import BLENDERS, blender_from_json
from ensemble.core import fingerprint as fp
from ensemble.core import progress
from ensemble.core.cache import RunCache
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import from_dict, load_params
from ensemble.core.data import LABEL_NAMES, DataConfig, DataError, load_battles, read_battles
from ensemble.core.fingerprint import read_done
from ensemble.core.folds import attach_folds
from ensemble.core.io import write_csv
from ensemble.core.metrics import accuracy, log_loss
from ensemble.core.predictions import proba_frame, read_test_file
from ensemble.models import create, is_registered, model_class
from ensemble.models import load as load_model
from ensemble.models.base import CONFIG_FILE, REFIT_DIR, BaseModel
from ensemble.pipeline.distill import TEACHER_DIR, teachers_digest

#: what an identity part that changed means, for the message
CHANGED = {"config": "its params changed", "data": "the training rows (ids, texts or labels) changed",
           "folds": "the folds changed", "fold": "the folds changed", "code": "the code the model declares changed",
           "libraries": "the versions of the libraries it learns with changed",
           "backbone": "its pretrained weights changed",
           "teachers": "its teachers changed (their params, code, libraries, weights or files)"}
#: the parts `check_code=False` (submit --skip-code-check) leaves out
CODE_PARTS = ("code", "libraries")


def fold_dirs(artifacts: Path, name: str, params: dict | None = None, check_code: bool = True,
              cache: RunCache | None = None) -> list[Path]:
    """The model folders submit averages: fold_k for each fold of artifacts/folds.parquet that
    `<name>.folds` trains, or the one folder `full` where `<name>.refit_full` is on; each finished and
    trained for today's params, training rows, folds (not for the refit: it learned from every row),
    code, libraries, backbone and teachers (the OOF runner's FoldIdentity, part by part); anything else
    is a DataError naming the part, never a silent average of stale models. `check_code=False` leaves
    the code and library parts out."""
    root = artifacts / "models" / name
    folds_path, train_path = artifacts / "folds.parquet", artifacts / "prepared" / "train.parquet"
    for path in (folds_path, train_path):
        if not path.is_file():
            raise DataError(f"{path}: not found; submit checks the fold models against it (run `dvc repro` first)")
    train = load_battles(train_path)
    fold_of = attach_folds(train, pd.read_parquet(folds_path))
    n = int(fold_of.max()) + 1
    params = load_params() if params is None else params  # params.yaml of the working directory
    model = create(name, params.get(name, {}), cache=cache)
    if model.refits():
        found = {REFIT_DIR: root / REFIT_DIR}
        trained: list = [REFIT_DIR]
        what = f"the refit on every training row ({name}.refit_full)"
    else:
        found = {int(m.group(1)): d for d in root.glob("fold_*") if (m := re.fullmatch(r"fold_(\d+)", d.name))}
        trained = model.trained_folds(n)
        what = (f"the {n} folds of {folds_path}" if len(trained) == n
                else f"the folds {trained} of {folds_path} it trains ({name}.folds)")
    missing = [k for k in trained if k not in found or not read_done(found[k])]
    if missing and model.refits():
        raise DataError(f"{root / REFIT_DIR}: missing or unfinished, {what}; run `dvc repro model@{name}`")
    if missing:
        raise DataError(f"{root}: fold model(s) {', '.join(f'fold_{k}' for k in missing)} missing or unfinished for "
                        f"{what}; run `dvc repro model@{name}`")
    extra = sorted(k for k in found if k != REFIT_DIR and k >= n)
    if extra:
        raise DataError(f"{root}: {', '.join(f'fold_{k}' for k in extra)} beyond the {n} folds of {folds_path} "
                        f"(left by a run with more folds); delete them or rerun `dvc repro model@{name}`")
    unlabelled_path = artifacts / "prepared" / "unlabelled.parquet"  # a student's pseudo-labelled battles
    unlabelled = load_battles(unlabelled_path) if unlabelled_path.is_file() and _distils(model) else None
    teachers = teachers_digest(model, params, train, unlabelled, TEACHER_DIR, cache)
    identities = fp.Identities(model, train, fold_of, teachers)
    learned = json.loads(json.dumps(model.learned_config(), default=str))  # as saved
    for k in trained:
        done = read_done(found[k])
        saved = model.learned_view(_saved_config(found[k]))
        changed_keys = sorted(key for key in set(learned) | set(saved) if learned.get(key) != saved.get(key))
        today = identities.full() if k == REFIT_DIR else identities.of(k)
        saved_parts = done.get("parts", {})
        parts = [p for p in today.changed(saved_parts) if check_code or p not in CODE_PARTS]
        if not changed_keys and not parts:
            continue
        why = (f"params {', '.join(f'{name}.{key}' for key in changed_keys)} changed" if changed_keys
               else " and ".join(dict.fromkeys(CHANGED.get(p, f"its {p} part changed") for p in parts)))
        if "libraries" in parts and not changed_keys:
            why += f" ({saved_parts.get('libraries')} then, {today.parts['libraries']} now)"
        code_only = not changed_keys and set(parts) <= set(CODE_PARTS)
        raise DataError(f"{found[k]}: no longer matches its fingerprint: {why} since it was trained; run "
                        f"`dvc repro model@{name}`" + (" (after a code or library change only: or submit "
                                                       "--skip-code-check)" if code_only else ""))
    return [found[k] for k in trained]


def _distils(model: BaseModel) -> bool:
    distill = getattr(model.config, "distill", None)
    return distill is not None and distill.on


def _saved_config(fold_dir: Path) -> dict:
    try:
        return json.loads((fold_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}


def fold_models(artifacts: Path, name: str, params: dict | None = None, check_code: bool = True,
                cache: RunCache | None = None) -> Iterator[BaseModel]:
    """The fold models of one base model, checked up front (fold_dirs) and loaded with today's run-time keys:
    the K fold models, one at a time as they are iterated (submit predicts and drops each: one in memory; a
    Judge keeps them all), or the one model merged from them where `<name>.merge_folds` is on."""
    params = load_params() if params is None else params
    cache = cache if cache is not None else RunCache()
    dirs = fold_dirs(artifacts, name, params, check_code, cache)
    runtime = params.get(name, {})
    if runtime.get("merge_folds") and len(dirs) > 1:  # the folds merged: one inference pass
        module, func = model_class(name).merger.split(":")
        merged = getattr(importlib.import_module(module), func)([load_model(d, cache=cache, runtime=runtime)
                                                                for d in dirs])
        progress.log(f"[{name}] predicting with the {len(dirs)} folds merged into one model")
        return iter([merged])

    def each() -> Iterator[BaseModel]:
        for d in dirs:
            progress.log(f"[{name}] predicting with {d}")
            yield load_model(d, cache=cache, runtime=runtime)

    return each()


def fold_average(models: Iterable[BaseModel], frame: pd.DataFrame) -> np.ndarray:
    """(n, 3) mean of the models' probabilities of `frame` (fold averaging; a merged model's are its own)."""
    total, count = np.zeros((len(frame), 3)), 0
    for model in models:
        total += np.asarray(model.predict_proba(frame), dtype=float)
        count += 1
    return total / count


def predict_model(artifacts: Path, name: str, frame: pd.DataFrame, params: dict | None = None,
                  check_code: bool = True, cache: RunCache | None = None) -> np.ndarray:
    """Fold-averaged probabilities of one base model, its run-time keys from today's params."""
    return fold_average(fold_models(artifacts, name, params, check_code, cache), frame)


def cached_test_predictions(artifacts: Path, name: str, frame: pd.DataFrame,
                            source: str = "the test file") -> np.ndarray:
    """artifacts/test/<name>.parquet (the OOF stage's fold-averaged test predictions, or a model from
    elsewhere's), checked and taken for exactly the ids of `frame`, in its order."""
    hint = (f"rerun the {name} stage for this test file, or drop --reuse-test-predictions" if is_registered(name)
            else f"{name} is a model from elsewhere: write its predictions for this test file")
    return read_test_file(artifacts / "test" / f"{name}.parquet", name, frame["id"], source, hint, frame)


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


def read_blender(artifacts: Path):
    """The fitted blender of artifacts/blend.json; a missing or broken file is one clear line."""
    path = artifacts / "blend.json"
    if not path.exists():
        raise DataError(f"{path}: no fitted blend; run `dvc repro` (or `python -m ensemble.blend`) first")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or saved.get("method") not in BLENDERS:
            method = saved.get("method") if isinstance(saved, dict) else None
            raise DataError(f"{path}: method {method!r} is not a blender of this version ({', '.join(BLENDERS)}); "
                            f"rerun python -m ensemble.blend")
        return blender_from_json(saved)
    except DataError:
        raise
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise DataError(f"{path}: not valid JSON ({exc}); rerun python -m ensemble.blend") from None
        raise DataError(f"{path}: not a complete blend ({exc}); rerun python -m ensemble.blend") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a complete blend ({type(exc).__name__}: {exc}); "
                        f"rerun python -m ensemble.blend") from None


def blend_models(blender, frame: pd.DataFrame, predict: Callable[[str], np.ndarray]) -> np.ndarray:
    """(n, 3) the fitted blend of `frame`: `predict(name)` for each model the blend uses, a uniform row for one
    it does not (e.g. a zero weight: it does not move the blend); the frame's texts let the blender apply its
    degenerate-battle rule."""
    used = set(blender.used_models())
    probas = [predict(name) if name in used else np.full((len(frame), 3), 1 / 3) for name in blender.models]
    return blender.predict(probas, frame)


def make_submission(test: pd.DataFrame, artifacts: Path, reuse_cached: bool = False, params: dict | None = None,
                    source: str = "the test file", check_code: bool = True) -> pd.DataFrame:
    blender = read_blender(artifacts)
    cache = RunCache()  # shared by every model and fold of this submission

    def predict(name: str) -> np.ndarray:
        if reuse_cached or not is_registered(name):
            return cached_test_predictions(artifacts, name, test, source)
        return predict_model(artifacts, name, test, params, check_code, cache)

    sub = proba_frame(test["id"], blend_models(blender, test, predict))
    validate_submission(sub, list(test["id"]))
    # the classes the blend's training rows held and their count: what a labelled file's score sets apart
    sub.attrs.update(classes=list(blender.classes_), train_rows=int(blender.n_rows_))
    return sub


def score_lines(labels: np.ndarray, proba: np.ndarray, classes: list[int], n_train: int) -> list[str]:
    """The score against a labelled file: on all rows and, where the file holds a class the training rows
    never had (ties in a file, a binary-trained run), also on the rows of the classes training had. Those
    left-out rows are priced at the add-one floor 1/(n+3) whatever the models say, and dominate the first."""
    labels = np.asarray(labels, dtype=np.int64)
    lines = [f"log loss {log_loss(labels, proba):.4f}, accuracy {accuracy(labels, proba):.4f} on all {len(labels)} "
             f"rows of the file's labels"]
    absent = [k for k in range(3) if k not in set(classes)]
    kept = np.isin(labels, classes)
    if kept.all():
        return lines
    had = " / ".join(LABEL_NAMES[k] for k in classes)
    left = ", ".join(f"{int((labels == k).sum())} {LABEL_NAMES[k]} rows" for k in absent if (labels == k).any())
    never = " / ".join(LABEL_NAMES[k] for k in absent)
    why = (f"{left} left out: training had no {never} rows, so P({never}) is floored at 1/(n+3) = "
           f"{1 / (n_train + 3):.4f} (n = {n_train} training rows)")
    if not kept.any():
        return [*lines, f"no rows of the classes training had ({had}); {why}"]
    return [*lines, f"log loss {log_loss(labels[kept], proba[kept]):.4f}, accuracy "
                    f"{accuracy(labels[kept], proba[kept]):.4f} on the {int(kept.sum())} rows of the classes "
                    f"training had ({had}); {why}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.submit", description=__doc__)
    ap.add_argument("test_csv", help="test battles: .csv, .jsonl or .parquet in any accepted layout (docs/data.md)")
    ap.add_argument("-o", "--output", default="submission.csv")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--params", default="params.yaml", help="the fold models are checked against its model sections")
    ap.add_argument("--skip-code-check", action="store_true",
                    help="accept fold models trained by other code or library versions (params, data, folds, "
                         "weights and teachers are still checked)")
    ap.add_argument("--reuse-test-predictions", action="store_true",
                    help="use artifacts/test/<model>.parquet (written by `dvc repro` for data.test) "
                         "instead of predicting")
    args = ap.parse_args(argv)
    path = Path(args.test_csv)
    params = load_params(args.params)
    # the same coin as prepare: a preference file's chosen answer lands on the same side
    side_seed = from_dict(DataConfig, params.get("data", {}), "data").side_seed
    test = read_battles(path, labels=None, drop_duplicates=False, side_seed=side_seed)
    sub = make_submission(test, Path(args.artifacts), args.reuse_test_predictions, params, str(path),
                          not args.skip_code_check)
    write_csv(args.output, sub)
    print(f"wrote {args.output}: {len(sub)} rows")
    if "label" in test:
        for line in score_lines(test["label"].to_numpy(), sub[list(TARGETS)].to_numpy(),
                                sub.attrs.get("classes", [0, 1, 2]), sub.attrs.get("train_rows", 0)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
