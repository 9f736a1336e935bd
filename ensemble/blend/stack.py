"""Level-2 stacker: a regularised multinomial logistic regression (scikit-learn) on the base models'
OOF log-probabilities, optionally with a few meta-features of the battle; its L2 strength is chosen by
a prompt-grouped inner CV on the rows it is fitted on. Stored as plain numbers (no pickles).

What keeps a weak signal weak:
* It is fitted on the classes its rows hold (binary data: a logistic regression over A / B, the tie
  floored by the Blender), and a feature that is constant within every fold its rows come from is
  left out: a model that predicted its fold's class prior on every row, or a tie column at its floor,
  differs between folds only by the folds' class frequencies, and a learned weight on it would be a
  weight on which fold a row is in.
* The log-probabilities are centred, not scaled: they are in nats, so a model whose predictions barely
  move (0.02 nats of signal) gets a coefficient of the same size as any other and its small spread
  stays small; standardising it would stretch that spread to one unit and let the fit turn it into
  confident predictions. Only the meta-features, in other units, are standardised.
* When no model's predictions vary (every model at the prior) it predicts the class frequencies: the
  meta-features are there to adjust the models, not to be a model of their own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble.blend.base import Blender
from ensemble.core.calibration import logistic_coef3, proba3
from ensemble.core.config import Each, Range, to_dict
from ensemble.core.data import as_turns
from ensemble.core.metrics import log_loss

#: meta-features the stacker may add: log-length difference A - B (characters) and prompt turns
META_FEATURES = ("len_diff", "turns")
#: frame columns holding meta_features(): the blend stage adds them once for every stacker it fits
META_COLUMNS = tuple(f"meta_{name}" for name in META_FEATURES)
LOG_FLOOR = 1e-6  # log-probability features are clipped here: a 1e-15 would be an outlier of -34


@dataclass
class StackConfig:
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])  # inverse L2 strengths tried
    meta_features: bool = True  # add META_FEATURES to the log-probabilities
    inner_splits: int = 5  # prompt-grouped inner folds that choose C

    constraints: ClassVar[dict] = {"inner_splits": Range(2), "c_grid": Each(Range(0, low_open=True), min_len=1)}


def meta_features(frame: pd.DataFrame) -> np.ndarray:
    """(n, 2): log(1 + chars of A) - log(1 + chars of B), and log(number of prompt turns)
    (from META_COLUMNS when the frame carries them)."""
    if all(col in frame for col in META_COLUMNS):
        return frame[list(META_COLUMNS)].to_numpy(dtype=float)

    def chars(col: str) -> np.ndarray:
        return np.array([sum(len(t) for t in as_turns(cell)) for cell in frame[col]], dtype=float)

    len_diff = np.log1p(chars("response_a")) - np.log1p(chars("response_b"))
    turns = np.log(np.array([len(as_turns(cell)) for cell in frame["prompt"]], dtype=float))
    return np.column_stack([len_diff, turns])


def stack_features(probas: list[np.ndarray], frame: pd.DataFrame | None, meta: bool) -> np.ndarray:
    cols = [np.log(np.clip(np.asarray(p, dtype=float), LOG_FLOOR, 1.0)) for p in probas]
    if meta:
        if frame is None:
            raise ValueError("the stacker's meta-features need the battle frame")
        cols.append(meta_features(frame))
    return np.hstack(cols)


#: a feature whose spread within every fold is below this is constant there (nats or standard units)
CONSTANT_SPREAD = 1e-6


def varying_columns(x: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Indices of the columns of `x` that vary within at least one fold (folds: each row's OOF fold;
    one value for rows without folds)."""
    spread = np.zeros(x.shape[1])
    for k in np.unique(folds):
        rows = x[folds == k]
        if len(rows) > 1:
            spread = np.maximum(spread, rows.max(axis=0) - rows.min(axis=0))
    return np.flatnonzero(spread > CONSTANT_SPREAD)


#: what a fit sets: the numbers shared_fits() keeps
FITTED = ("columns", "mean", "scale", "c", "coef", "intercept", "inner_log_loss")
#: the fits shared_fits() keeps: fit key -> the fitted numbers (None outside the block)
_SHARED_FITS: ContextVar[dict | None] = ContextVar("stack_fits", default=None)


@contextmanager
def shared_fits() -> Iterator[None]:
    """Within the block, a stacker fitted on the same features, labels, folds, prompt groups and
    config as an earlier one takes that fit's numbers instead of fitting again (the same inputs give
    the same numbers). The blend stage fits the same training folds many times: the stacker
    cross-fitted, again inside select's nested choice (the fit without folds j and k serves outer
    fold j and outer fold k), and again by the degenerate report."""
    token = _SHARED_FITS.set({})
    try:
        yield
    finally:
        _SHARED_FITS.reset(token)


def _fit_key(x: np.ndarray, labels: np.ndarray, folds: np.ndarray, groups: np.ndarray,
             config) -> str:
    h = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode())
    ints = (labels, folds, groups)
    for part in (x, *(np.asarray(v, dtype=np.int64) for v in ints)):
        h.update(str(part.shape).encode())
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def _logistic(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000)


class StackBlender(Blender):
    name = "stack"
    Config = StackConfig
    about = "logistic regression on the models' log-probabilities (+ length/turn meta-features), C by inner CV"

    def features(self) -> list[str]:
        names = [f"log_{m}_{k}" for m in self.models for k in ("a", "b", "tie")]
        return names + (list(META_FEATURES) if self.config.meta_features else [])

    def _scaling(self, x: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) of the kept columns: log-probabilities centred only, meta-features standardised."""
        mean = x[:, columns].mean(axis=0)
        scale = np.ones(len(columns))
        meta = columns >= 3 * len(self.models)
        if meta.any():
            std = x[:, columns[meta]].std(axis=0)
            scale[meta] = np.where(std > CONSTANT_SPREAD, std, 1.0)
        return mean, scale

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        """C from c_grid by a prompt-grouped inner CV (lowest log loss), then a fit on every row (or
        the numbers of the same fit made earlier within shared_fits())."""
        from ensemble.core.folds import prompt_groups

        cfg = self.config
        x = stack_features(probas, frame, cfg.meta_features)
        folds = frame["fold"].to_numpy() if "fold" in frame else np.zeros(len(labels))
        groups = prompt_groups(frame)
        shared = _SHARED_FITS.get()
        key = _fit_key(x, labels, folds, groups, cfg) if shared is not None else None
        if key is not None and key in shared:
            for name, value in shared[key].items():
                setattr(self, name, value)
            return
        self._fit_numbers(x, labels, folds, groups)
        if key is not None:
            shared[key] = {name: getattr(self, name) for name in FITTED}

    def _fit_numbers(self, x: np.ndarray, labels: np.ndarray, folds: np.ndarray,
                     groups: np.ndarray) -> None:
        from sklearn.model_selection import GroupKFold

        cfg = self.config
        self.columns = varying_columns(x, folds)
        if not (self.columns < 3 * len(self.models)).any():
            # no model's predictions vary: nothing to blend, and the meta-features alone would be a second
            # length model (LightGBM sees lengths and turns) fitted on the blend's few rows: the prior
            self.columns = self.columns[:0]
        self.mean, self.scale = self._scaling(x, self.columns)
        z = (x[:, self.columns] - self.mean) / self.scale
        k = min(cfg.inner_splits, len(np.unique(groups)))
        scores = {}
        if len(cfg.c_grid) > 1 and k >= 2 and len(self.columns):
            splits = list(GroupKFold(n_splits=k).split(z, labels, groups))
            for c in cfg.c_grid:
                pred = np.zeros((len(labels), 3))
                for tr, va in splits:
                    pred[va] = proba3(_logistic(c).fit(z[tr], labels[tr]), z[va])
                scores[c] = log_loss(labels, pred)
        self.c = min(scores, key=scores.get) if scores else cfg.c_grid[0]
        if len(self.columns):
            self.coef, self.intercept = logistic_coef3(_logistic(self.c).fit(z, labels))
        else:  # nothing varies: the class frequencies of the rows (a logistic regression on no feature)
            counts = np.bincount(labels, minlength=3).astype(float)
            self.coef = np.zeros((3, 0))
            self.intercept = np.where(counts > 0, np.log(np.clip(counts, 1e-12, None) / len(labels)), -30.0)
        self.inner_log_loss = {str(c): round(v, 6) for c, v in scores.items()}

    def _predict(self, probas, frame) -> np.ndarray:
        x = stack_features(probas, frame, self.config.meta_features)
        z = (x[:, self.columns] - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        return np.exp(logits)

    def summary(self) -> dict:
        return {"C": self.c}

    def _state(self) -> dict:
        names = self.features()
        return {"C": self.c, "features": [names[j] for j in self.columns], "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "inner_cv_log_loss": self.inner_log_loss}

    def _set_state(self, state: dict) -> None:
        names = self.features()
        unknown = [f for f in state["features"] if f not in names]
        if unknown:
            raise ValueError(f"stacker features {unknown} are not among {names}")
        self.columns = np.array([names.index(f) for f in state["features"]], dtype=np.int64)
        self.c = float(state["C"])
        self.mean, self.scale = np.asarray(state["mean"], dtype=float), np.asarray(state["scale"], dtype=float)
        self.coef = np.asarray(state["coef"], dtype=float).reshape(3, len(self.columns))
        self.intercept = np.asarray(state["intercept"], dtype=float)
        self.inner_log_loss = dict(state.get("inner_cv_log_loss", {}))
