"""Prediction files: every model's OOF and test probabilities, checked before a blend or a submission
uses them. A model brought from elsewhere (not registered in ensemble.models) exists only as these two
files, so they are its whole contract:

    artifacts/oof/<name>.parquet   id, fold, winner_model_a, winner_model_b, winner_tie
                                   (one row per training id, fold as in artifacts/folds.parquet)
    artifacts/test/<name>.parquet  id, winner_model_a, winner_model_b, winner_tie
                                   (at least every id of the test file predicted)

Probabilities finite, within [0, 1], rows summing to 1 (within SUM_TOL); ids unique. In an OOF file a
row of a fold the model did not train (`<model>.folds`) holds NaN in all three columns: the blend is
fitted on the rows every blended model covers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core.errors import DataError
from ensemble.core.formats import listed

SUM_TOL = 1e-4
#: models/<name>/input.json: how much of each text a transformer model saw (truncation at max_len)
INPUT_REPORT = "input.json"


#: OOF file metadata: the folds whose every held-out row got the same probabilities (the model fell back
#: to the class prior there: it showed no gain on its held-out training prompts)
PRIOR_FOLDS_ATTR = "prior_folds"


def file_attr(path: Path, key: str):
    """One entry of a prediction file's metadata (pandas attrs written with it); None when absent."""
    import json

    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        attrs = json.loads(meta.get(b"PANDAS_ATTRS", b"{}"))
    except (OSError, ValueError):
        return None
    return attrs.get(key)


def constant_rows(proba: np.ndarray) -> bool:
    """Whether every row holds the same probabilities (a fold that predicts its class prior)."""
    proba = np.asarray(proba, dtype=np.float64)
    return len(proba) > 1 and float(np.ptp(proba, axis=0).max()) < 1e-9


def proba_frame(ids, proba: np.ndarray, fold=None) -> pd.DataFrame:
    frame = pd.DataFrame({"id": pd.Series(ids, dtype=str).to_numpy()})
    if fold is not None:
        frame["fold"] = fold
    for j, col in enumerate(TARGETS):
        frame[col] = proba[:, j].astype(np.float64)
    return frame


def check_proba(proba: np.ndarray, n: int, name: str) -> None:
    """A model's own output, checked before it is saved: a violation is a bug in the model, not bad input."""
    if proba.shape != (n, 3):
        raise RuntimeError(f"model {name} returned probabilities of shape {proba.shape}, expected ({n}, 3)")
    if not np.isfinite(proba).all():
        raise RuntimeError(f"model {name} returned non-finite probabilities")
    if np.abs(proba.sum(axis=1) - 1).max() > SUM_TOL:
        raise RuntimeError(f"model {name} returned rows that do not sum to 1")


def read_predictions(path: Path, name: str, columns: tuple[str, ...] = ("id", *TARGETS),
                     uncovered: bool = False) -> pd.DataFrame:
    """Read a prediction file and check what holds whatever rows it is compared with."""
    if not path.is_file():
        raise DataError(f"{path}: no prediction file for model {name!r}; run its stage first (dvc repro "
                        f"model@{name}), or for a model from elsewhere write this file "
                        f"(docs/blending.md, 'Models from elsewhere')")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    return checked_predictions(frame, path, columns, uncovered)


def checked_predictions(frame: pd.DataFrame, path, columns: tuple[str, ...] = ("id", *TARGETS),
                        uncovered: bool = False) -> pd.DataFrame:
    """A prediction frame read from `path` (or a block of it), checked, indexed by id. `uncovered`: rows
    all NaN are allowed (an OOF file's rows of folds the model did not train)."""
    missing = [c for c in columns if c not in frame]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    frame = frame.assign(id=frame["id"].astype(str))
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: {len(dup)} duplicate id(s): {listed(dup.unique())}; one row per id")
    values = frame[list(TARGETS)].to_numpy(dtype=float, copy=True)
    blank = np.isnan(values).all(axis=1) if uncovered else np.zeros(len(frame), dtype=bool)
    values[blank] = 1 / 3  # checked as a valid row; the caller reads the NaN
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: columns {', '.join(TARGETS)} hold NaN/inf in rows with id {listed(frame['id'][bad])}")
    bad = ((values < 0) | (values > 1)).any(axis=1)
    if bad.any():
        raise DataError(f"{path}: probabilities outside [0, 1] in rows with id {listed(frame['id'][bad])}")
    bad = np.abs(values.sum(axis=1) - 1) > SUM_TOL
    if bad.any():
        raise DataError(f"{path}: rows that do not sum to 1 (within {SUM_TOL}) with id {listed(frame['id'][bad])}")
    return frame.set_index("id")


def read_oof_file(path: Path, name: str, ids: pd.Index, fold_of: np.ndarray | None,
                  folds_source: str = "artifacts/folds.parquet") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, folds) aligned with the training `ids`; the ids must be exactly the training
    ids and, when `fold_of` is given, the fold column must equal it. Rows of folds the model did not
    train are NaN."""
    frame = read_predictions(path, name, ("id", "fold", *TARGETS), uncovered=True)
    missing = ids.difference(frame.index)
    if len(missing):
        raise DataError(f"{path}: no OOF rows for {len(missing)} training ids (e.g. {listed(missing, 5)}); "
                        f"its folds are stale, rerun its stage or rewrite the file for these training ids")
    extra = frame.index.difference(ids)
    if len(extra):
        raise DataError(f"{path}: {len(extra)} id(s) that are not training ids (e.g. {listed(extra, 5)}); "
                        f"the OOF file must hold exactly the training ids")
    frame = frame.loc[ids]
    folds = frame["fold"].to_numpy()
    if not np.issubdtype(folds.dtype, np.integer):
        raise DataError(f"{path}: column fold has dtype {folds.dtype}; expected whole numbers as in {folds_source}")
    if fold_of is not None and not np.array_equal(folds, fold_of):
        bad = ids[folds != fold_of]
        raise DataError(f"{path}: column fold differs from {folds_source} in {len(bad)} rows (e.g. id "
                        f"{listed(bad, 5)}); OOF predictions must come from the project's folds")
    return frame[list(TARGETS)].to_numpy(dtype=float), folds.astype(np.int64)


#: parquet metadata of a test prediction file written here: id -> digest of the texts it was predicted for
TEXTS_ATTR = "texts_digest"


def read_test_file(path: Path, name: str, ids: pd.Series, test_source: str, hint: str,
                   battles: pd.DataFrame | None = None) -> np.ndarray:
    """Test probabilities of `name` for `ids`, in their order; every id must be predicted."""
    frame = read_predictions(path, name)
    ids = pd.Index(pd.Series(ids).astype(str))
    missing = ids.difference(frame.index)
    if len(missing):
        raise DataError(f"{path}: no predictions for {len(missing)} of the {len(ids)} ids of {test_source} "
                        f"(e.g. {listed(missing, 5)}); {hint}")
    digests = frame.attrs.get(TEXTS_ATTR)
    if digests and battles is not None:  # written by this project's OOF runner: the texts must match too
        from ensemble.core.fingerprint import row_digests

        changed = [i for i, d in row_digests(battles).items() if digests.get(i) != d]
        if changed:
            raise DataError(f"{path}: {len(changed)} of the {len(ids)} ids of {test_source} have other texts than "
                            f"when these predictions were made (e.g. {listed(changed, 5)}); {hint}")
    return frame.loc[ids, list(TARGETS)].to_numpy(dtype=float)
