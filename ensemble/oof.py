"""Generic out-of-fold runner: one model per fold, OOF and fold-averaged test probabilities.

It never knows which model it holds. A finished fold is kept (resumable after a crash) as long as
its fingerprint (model config, training rows, fold assignment) still matches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core import progress
from ensemble.nn import distributed as dist
from ensemble.core.config import to_dict
from ensemble.core.folds import attach_folds
from ensemble.core.io import remove_stale_tmp, write_json, write_parquet
from ensemble.core.metrics import log_loss, prior_proba
from ensemble.core.predictions import proba_frame
from ensemble.models import create, load

DONE_FILE = "done.json"
#: models/<name>/input.json: how much of each text the model saw (written when the model reports it).
INPUT_REPORT = "input.json"


def code_digest() -> str:
    """The library's source: a fold trained by other code is not reused (resume is for crashes)."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(name: str, config: dict, train: pd.DataFrame, fold_of: np.ndarray, k: int, code: str) -> str:
    h = hashlib.sha256()
    h.update(code.encode())
    h.update(json.dumps({"model": name, "config": config, "fold": k}, sort_keys=True, default=str).encode())
    h.update("\x1e".join(train["id"].astype(str)).encode())
    h.update(np.ascontiguousarray(train["label"].to_numpy(dtype=np.int64)).tobytes())
    h.update(np.ascontiguousarray(fold_of).tobytes())
    return h.hexdigest()


def run_oof(name: str, config: dict, train: pd.DataFrame, folds: pd.DataFrame, artifacts: str | Path,
            test: pd.DataFrame | None = None) -> dict:
    """Train one `name` model per fold; write oof/<name>.parquet and test/<name>.parquet."""
    artifacts = Path(artifacts)
    fold_of = attach_folds(train, folds)
    model_root = artifacts / "models" / name
    n_folds = int(fold_of.max()) + 1
    oof = np.full((len(train), 3), np.nan)
    test_sum = np.zeros((len(test), 3)) if test is not None else None
    timings = {}
    code = code_digest()
    model_for_report = None
    main = dist.is_main()  # under DDP every process trains, only rank 0 touches the artifacts
    if main:
        remove_stale_tmp(model_root, *(artifacts / d / f"{name}{ext}" for d, ext in
                                       (("oof", ".parquet"), ("test", ".parquet"), ("timings", ".json"))))
    for k in range(n_folds):
        fold_dir = model_root / f"fold_{k}"
        tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        model = create(name, config)
        key = fingerprint(name, to_dict(model.config), train, fold_of, k, code)
        done = fold_dir / DONE_FILE
        # rank 0 decides for every process, before it changes the folder
        reuse = dist.from_main(main and done.exists() and json.loads(done.read_text()).get("fingerprint") == key)
        if reuse:
            progress.log(f"[{name}] fold {k}: already done, reusing {fold_dir}")
            model = load(fold_dir) if main else None
            timings[k] = 0.0
        else:
            if main and fold_dir.exists():
                shutil.rmtree(fold_dir)
            progress.log(f"[{name}] fold {k}: training on {len(tr)} rows, validating on {len(va)}")
            start = time.perf_counter()
            model.fit(train.iloc[tr].reset_index(drop=True), train.iloc[va].reset_index(drop=True))
            timings[k] = time.perf_counter() - start
            if main:
                tmp_dir = fold_dir.with_name(fold_dir.name + ".tmp")
                if tmp_dir.exists():
                    shutil.rmtree(tmp_dir)
                model.save(tmp_dir)
                tmp_dir.rename(fold_dir)
        if main:
            valid_pred = _predict_cached(model, train.iloc[va].reset_index(drop=True), fold_dir / "valid_pred.npy", key)
            oof[va] = valid_pred
            if test is not None:
                test_sum += _predict_cached(model, test, fold_dir / "test_pred.npy", key + _frame_key(test))
            write_json(done, {"fingerprint": key, "valid_rows": len(va)})  # no timings: DVC hashes this folder
            if "label" in train:
                labels = train["label"].to_numpy()[va]
                progress.log(f"[{name}] fold {k}: fit {timings[k]:.1f} s, fold log loss {log_loss(labels, valid_pred):.4f}"
                             f" (fold prior {log_loss(labels, prior_proba(train['label'].to_numpy()[tr], len(va))):.4f})")
        dist.barrier(f"fold {k} saved and predicted")
        model_for_report = model
    if not main:
        dist.finish("OOF and test files written")
        return {"folds": n_folds, "fit_seconds": timings}
    report = getattr(model_for_report, "input_report", None) if model_for_report is not None else None
    if report is not None:  # what the model saw of the texts (transformers: truncation at max_len)
        write_json(model_root / INPUT_REPORT, report(train))
    write_parquet(artifacts / "oof" / f"{name}.parquet", proba_frame(train["id"], oof, fold_of))
    if test is not None:
        write_parquet(artifacts / "test" / f"{name}.parquet", proba_frame(test["id"], test_sum / n_folds))
    write_json(artifacts / "timings" / f"{name}.json", {"fit_seconds": timings})  # untracked: differs per run
    dist.finish()
    return {"folds": n_folds, "fit_seconds": timings}


def _frame_key(frame: pd.DataFrame) -> str:
    return hashlib.sha256("\x1e".join(frame["id"].astype(str)).encode()).hexdigest()[:16]


def _predict_cached(model, frame: pd.DataFrame, path: Path, key: str) -> np.ndarray:
    """Predictions of a finished fold survive a crash in a later fold."""
    meta = path.with_suffix(".key")
    if path.exists() and meta.exists() and meta.read_text() == key:
        return np.load(path)
    proba = np.asarray(model.predict_proba(frame), dtype=np.float64)
    _check_proba(proba, len(frame), model.name)
    from ensemble.core.io import atomic_path, write_text
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, proba)
    write_text(meta, key)
    return proba


def _check_proba(proba: np.ndarray, n: int, name: str) -> None:
    if proba.shape != (n, 3):
        raise RuntimeError(f"model {name} returned probabilities of shape {proba.shape}, expected ({n}, 3)")
    if not np.isfinite(proba).all():
        raise RuntimeError(f"model {name} returned non-finite probabilities")
    if np.abs(proba.sum(axis=1) - 1).max() > 1e-4:
        raise RuntimeError(f"model {name} returned rows that do not sum to 1")
