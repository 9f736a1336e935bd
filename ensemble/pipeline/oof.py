"""Generic out-of-fold runner: one model per fold, OOF and fold-averaged test probabilities.

`<model>.folds` lists the folds it trains (the others' OOF rows are NaN, their test predictions left
out of the average); `<model>.refit_full` fits one more model on every training row (models/<name>/full,
fingerprinted without the folds), whose test predictions replace the fold average.

It never knows which model it holds. A finished fold is kept (resumable after a crash, and a rerun
after an edit elsewhere costs nothing) as long as its identity still matches: its training rows
(ids, texts, labels), the folds, the model's config without its run-time keys, the code it declares,
its libraries' versions, the pretrained weights it starts from and its teachers
(ensemble.core.fingerprint.FoldIdentity). Its predictions are kept under that identity plus the
predicted rows' ids and texts: a valid-row edit recomputes that prediction, not the fold.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core import fingerprint as fp
from ensemble.core import position, progress
from ensemble.core.cache import RunCache
from ensemble.core.config import ConfigError
from ensemble.core.fingerprint import DONE_FILE, read_done
from ensemble.core.folds import attach_folds
from ensemble.core.io import atomic_path, remove_stale_tmp, write_json, write_parquet, write_text
from ensemble.core.metrics import accuracy, log_loss, prior_proba
from ensemble.core.predictions import (
    INPUT_REPORT,
    PRIOR_FOLDS_ATTR,
    TEXTS_ATTR,
    check_proba,
    constant_rows,
    proba_frame,
)
from ensemble.models import create, load
from ensemble.models.base import REFIT_DIR, BaseModel
from ensemble.nn import distributed as dist
from ensemble.pipeline.distill import TEACHER_DIR, Teachers, teachers_digest

POSITION_FILE = "position_bias.json"  # the fold's single-pass position-bias counts on its valid rows


def run_oof(name: str, config: dict, train: pd.DataFrame, folds: pd.DataFrame, artifacts: str | Path,
            test: pd.DataFrame | None = None, cache: RunCache | None = None, params: dict | None = None,
            unlabelled: pd.DataFrame | None = None, teacher_dir: Path = TEACHER_DIR) -> dict:
    """Train one `name` model per fold; write oof/<name>.parquet and test/<name>.parquet. A student
    (`distill.teachers` in its config) trains each fold on its teachers' soft labels, and on the
    pseudo-labelled `unlabelled` battles, from the teachers' sections of `params` (ensemble.pipeline.distill)."""
    artifacts = Path(artifacts)
    cache = cache if cache is not None else RunCache()  # shared by every fold of this run
    fold_of = attach_folds(train, folds)
    model_root = artifacts / "models" / name
    n_folds = int(fold_of.max()) + 1
    oof = np.full((len(train), 3), np.nan)  # rows of the folds it does not train stay NaN
    test_sum = np.zeros((len(test), 3)) if test is not None else None
    timings = {}
    main = dist.is_main()  # under DDP every process trains, only rank 0 touches the artifacts
    if main:
        remove_stale_tmp(model_root, *(artifacts / d / f"{name}{ext}" for d, ext in
                                       (("oof", ".parquet"), ("test", ".parquet"), ("timings", ".json"))))
    first = create(name, config, cache=cache)
    trained = first.trained_folds(n_folds)  # its `folds` key: refused here when it names a missing fold
    check_refit(first)
    first.check_resources([train] + ([test] if test is not None else []))  # refuse before any fold trains
    params = {**(params or {}), name: config}
    teachers_part = teachers_digest(first, params, train, unlabelled, teacher_dir, cache)
    identities = fp.Identities(first, train, fold_of, teachers_part)
    test_key = fp.frame_digest(test) if test is not None else ""
    teachers, distill = None, getattr(first.config, "distill", None)
    if distill is not None and distill.on:
        teachers = Teachers(name, distill, params, train, fold_of, model_root / "teachers", cache,
                            unlabelled, teacher_dir, write=main, saved=model_root.parent)
        teachers.save_report()
    # run-time keys that change predictions (not the model): a cached prediction is keyed by them too
    predict_settings = first.prediction_settings()
    last_dir, bias, prior_folds = None, [], []
    for k in trained:
        fold_dir = model_root / f"fold_{k}"
        tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        model = create(name, config, cache=cache)  # `first` is never fitted: one fold model alive at a time
        identity = identities.of(k)
        key = identity.key
        fit_frame = teachers.fold_frame(k, tr) if teachers else train.iloc[tr].reset_index(drop=True)
        # rank 0 decides for every process, before it changes the folder
        reuse = dist.from_main(main and read_done(fold_dir).get("fingerprint") == key)
        valid = train.iloc[va].reset_index(drop=True)
        if reuse:
            progress.log(f"[{name}] fold {k}: already done, reusing {fold_dir}")
            model, timings[k] = None, 0.0  # loaded below only if a prediction is not cached
        else:
            if main and fold_dir.exists():
                shutil.rmtree(fold_dir)
            progress.log(f"[{name}] fold {k}: training on {len(fit_frame)} rows, validating on {len(va)}")
            start = time.perf_counter()
            model.fit(fit_frame, valid)
            timings[k] = time.perf_counter() - start
            if main:
                save_folder(model, fold_dir)
        # every process predicts (a model may share the rows among them), rank 0 decides what is reused
        fold = LazyFold(model, fold_dir, cache, config)
        pred_key = fp.combine({"fold": key, "predict": fp.config_digest(predict_settings)})
        valid_key = fp.combine({"fold": pred_key, "valid": identities.rows_digest(fold_of == k)})
        valid_pred = _predict_cached(fold, valid, fold_dir / "valid_pred.npy", valid_key)
        test_pred = None if test is None or first.refits() else _predict_cached(
            fold, test, fold_dir / "test_pred.npy", fp.combine({"fold": pred_key, "test": test_key}))
        fold_bias = _position_counts(fold, valid, fold_dir / POSITION_FILE, valid_key)
        if main:
            oof[va] = valid_pred
            if constant_rows(valid_pred):  # the calibration gate (or too few rows) left the class prior
                prior_folds.append(k)
                progress.log(f"[{name}] fold {k}: predicts the class prior on all {len(va)} held-out rows: it "
                             f"showed no gain over the prior on its held-out training prompts (the calibration "
                             f"gate's numbers are in {fold_dir.name}'s log line and saved calibration)")
            if test_pred is not None:
                test_sum += test_pred
            bias.append(fold_bias)
            write_json(fold_dir / DONE_FILE, {"fingerprint": key, "parts": identity.parts, "valid_rows": len(va)})
            if "label" in train:
                labels = train["label"].to_numpy()[va]
                prior = prior_proba(train["label"].to_numpy()[tr], len(va))
                progress.log(f"[{name}] fold {k}: fit {timings[k]:.1f} s, "
                             f"fold log loss {log_loss(labels, valid_pred):.4f}"
                             f" (fold prior {log_loss(labels, prior):.4f}), accuracy "
                             f"{accuracy(labels, valid_pred):.4f}")
            last_dir = fold_dir
        model = fold = None  # fold k's model (an LLM: its adapter on the shared base) goes before k + 1 trains
        dist.barrier(f"fold {k} saved and predicted")
    refit_pred = None
    if first.refits():  # one more model on every training row: the test predictions are its own
        refit, timings[REFIT_DIR] = run_refit(name, config, train, model_root, identities.full(), cache, main)
        if test is not None:  # every process predicts, as for the folds
            refit_key = fp.combine({"fold": identities.full().key, "predict": fp.config_digest(predict_settings),
                                    "test": test_key})
            refit_pred = _predict_cached(refit, test, refit.folder / "test_pred.npy", refit_key)
        refit = None
    if not main:
        dist.finish("OOF and test files written")
        return {"folds": n_folds, "trained": trained, "fit_seconds": timings}
    if hasattr(first, "input_report"):  # what the model saw of the texts (transformers: truncation at max_len)
        shared = identities.model_parts
        report_key = fp.combine({**{k: shared[k] for k in ("config", "code", "backbone")},
                                 "rows": identities.rows_digest(np.ones(len(train), dtype=bool))})
        path = model_root / INPUT_REPORT
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if old.get("key") != report_key:  # it depends on texts, config and tokenizer, not on the folds
            report = LazyFold(None, last_dir, cache, config).get().input_report(train)
            write_json(path, {**report, "key": report_key})
    if len(trained) < n_folds:
        covered = int(np.isfinite(oof[:, 0]).sum())
        progress.log(f"[{name}] trained folds {trained} of {n_folds}: its OOF covers {covered} of {len(train)} "
                     f"rows (the others are NaN)")
    oof_frame = proba_frame(train["id"], oof, fold_of)
    oof_frame.attrs[position.ATTR] = position.summarise(bias)  # read by the blend stage into metrics.json
    oof_frame.attrs[PRIOR_FOLDS_ATTR] = prior_folds
    write_parquet(artifacts / "oof" / f"{name}.parquet", oof_frame)
    if test is not None:
        if refit_pred is not None:
            test_pred = refit_pred
        else:
            test_pred = test_sum / len(trained)  # the average of the folds it trained
        predicted = proba_frame(test["id"], test_pred)
        predicted.attrs[TEXTS_ATTR] = fp.row_digests(test)  # submit --reuse-test-predictions checks the texts
        write_parquet(artifacts / "test" / f"{name}.parquet", predicted)
    write_json(artifacts / "timings" / f"{name}.json", {"fit_seconds": timings})  # untracked: differs per run
    dist.finish()
    return {"folds": n_folds, "trained": trained, "fit_seconds": timings}


def check_refit(model: BaseModel) -> None:
    """`refit_full` with what it cannot do, refused before any fold trains: a student's targets come from
    teachers fitted per fold (ensemble.pipeline.distill), and no teacher fit covers every training row."""
    distill = getattr(model.config, "distill", None)
    if model.refits() and distill is not None and distill.on:
        raise ConfigError(f"params {model.name}.refit_full: true with {model.name}.distill.teachers "
                          f"{distill.teachers}: a refit on every training row has no honest teacher labels "
                          f"(they are fitted per fold); set refit_full: false or distill.teachers: []")


def run_refit(name: str, config: dict, train: pd.DataFrame, model_root: Path, identity: fp.FoldIdentity,
              cache: RunCache, main: bool) -> tuple[LazyFold, float]:
    """Fit one model on every training row into models/<name>/full (reused while its identity matches:
    fingerprint.Identities.full),
    with no held-out rows: nothing of its own can be scored, its folds' OOF stands for it. Returns it
    and its fit seconds (0 when reused)."""
    folder = model_root / REFIT_DIR
    key = identity.key
    model, seconds = None, 0.0
    if dist.from_main(main and read_done(folder).get("fingerprint") == key):
        progress.log(f"[{name}] refit on every training row: already done, reusing {folder}")
    else:
        if main and folder.exists():
            shutil.rmtree(folder)
        progress.log(f"[{name}] refit: training on all {len(train)} rows")
        model = create(name, config, cache=cache)
        start = time.perf_counter()
        model.fit(train.reset_index(drop=True), None)
        seconds = time.perf_counter() - start
        progress.log(f"[{name}] refit: fit {seconds:.1f} s")
        if main:
            save_folder(model, folder)
            write_json(folder / DONE_FILE, {"fingerprint": key, "parts": identity.parts, "train_rows": len(train)})
    dist.barrier("refit saved")
    return LazyFold(model, folder, cache, config), seconds


def save_folder(model: BaseModel, folder: Path) -> None:
    """A fitted model saved whole or not at all: into folder.tmp, then renamed (its done.json comes last)."""
    tmp_dir = folder.with_name(folder.name + ".tmp")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    model.save(tmp_dir)
    tmp_dir.rename(folder)


class LazyFold:
    """A fold's fitted model, loaded from its folder on first use: a reused fold whose predictions are
    all cached is never loaded (a rerun after an unrelated edit costs seconds, not model loads)."""

    def __init__(self, model: BaseModel | None, folder: Path, cache: RunCache, runtime: dict):
        self.model, self.folder, self.cache, self.runtime = model, folder, cache, runtime

    def get(self) -> BaseModel:
        if self.model is None:
            self.model = load(self.folder, cache=self.cache, runtime=self.runtime)
        return self.model


def _predict_cached(fold: LazyFold, frame: pd.DataFrame, path: Path, key: str) -> np.ndarray:
    """A finished fold's predictions survive a crash in a later fold, keyed by its fingerprint and the rows."""
    meta = path.with_suffix(".key")

    def read() -> np.ndarray | None:
        if path.exists() and meta.exists() and meta.read_text() == key:
            return np.load(path, allow_pickle=False)
        return None

    def compute() -> np.ndarray:
        model = fold.get()
        proba = np.asarray(model.predict_proba(frame), dtype=np.float64)
        check_proba(proba, len(frame), model.name)
        return proba

    def write(proba: np.ndarray) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, proba, allow_pickle=False)
        write_text(meta, key)

    return dist.kept_on_main(read, compute, write)


def _position_counts(fold: LazyFold, valid: pd.DataFrame, path: Path, key: str) -> dict:
    """The fold's position-bias counts (ensemble.core.position), kept in the fold folder under its fingerprint."""
    return dist.kept_on_main(lambda: position.kept_counts(path, key), lambda: position.fold_counts(fold.get(), valid),
                             lambda counts: write_json(path, {"key": key, "counts": counts}))
