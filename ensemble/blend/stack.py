"""Level-2 stacker and cross-fitting, the honest score of any blend.

`stack` is a regularised multinomial logistic regression (scikit-learn) on the base models' OOF
log-probabilities, optionally with a few meta-features of the battle; its L2 strength is chosen by a
prompt-grouped inner CV on the rows it is fitted on. `crossfit` refits any blender once per outer
fold on the other folds' OOF rows and predicts the held-out fold, so the blend is scored on rows
that chose nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from ensemble.core.config import ConfigError, Range
from ensemble.core.metrics import log_loss

#: meta-features the stacker may add: log-length difference A - B (characters) and prompt turns
META_FEATURES = ("len_diff", "turns")
LOG_FLOOR = 1e-6  # log-probability features are clipped here: a 1e-15 would be an outlier of -34


@dataclass
class StackConfig:
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])  # inverse L2 strengths tried
    meta_features: bool = True  # add META_FEATURES to the log-probabilities
    inner_splits: int = 5  # prompt-grouped inner folds that choose C

    constraints: ClassVar[dict] = {"inner_splits": Range(2)}

    def __post_init__(self):
        grid = self.c_grid
        if not grid or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 for c in grid):
            raise ConfigError(f"params blend.stack.c_grid: {grid!r} is not allowed; expected a non-empty list "
                              f"of numbers > 0 (inverse L2 strengths, e.g. [0.01, 0.1, 1.0, 10.0])")
        self.c_grid = [float(c) for c in grid]


def meta_features(frame: pd.DataFrame) -> np.ndarray:
    """(n, 2): log(1 + chars of A) - log(1 + chars of B), and log(number of prompt turns)."""
    chars = lambda col: np.array([sum(len(t) for t in turns) for turns in frame[col]], dtype=float)
    len_diff = np.log1p(chars("response_a")) - np.log1p(chars("response_b"))
    turns = np.log(np.array([max(1, len(t)) for t in frame["prompt"]], dtype=float))
    return np.column_stack([len_diff, turns])


def stack_features(probas: list[np.ndarray], frame: pd.DataFrame | None, meta: bool) -> np.ndarray:
    cols = [np.log(np.clip(np.asarray(p, dtype=float), LOG_FLOOR, 1.0)) for p in probas]
    if meta:
        if frame is None:
            raise ValueError("the stacker's meta-features need the battle frame")
        cols.append(meta_features(frame))
    return np.hstack(cols)


def _pipeline(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


@dataclass
class Stacker:
    """A fitted stacker, stored as plain numbers in blend.json (no pickles to load at submit)."""

    models: list[str]
    meta: bool
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (3, features)
    intercept: np.ndarray  # (3,)
    c: float
    inner_log_loss: dict[str, float] = field(default_factory=dict)  # C -> inner-CV log loss

    method: ClassVar[str] = "stack"

    def features(self) -> list[str]:
        names = [f"log_{m}_{k}" for m in self.models for k in ("a", "b", "tie")]
        return names + (list(META_FEATURES) if self.meta else [])

    def apply(self, probas: list[np.ndarray], frame: pd.DataFrame | None = None) -> np.ndarray:
        z = (stack_features(probas, frame, self.meta) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def to_json(self) -> dict:
        return {"method": self.method, "models": self.models, "weights": {},  # no per-model weights: see coef
                "C": self.c, "features": self.features(),
                "meta_features": self.meta, "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "inner_cv_log_loss": self.inner_log_loss}

    @classmethod
    def from_json(cls, obj: dict) -> "Stacker":
        return cls(list(obj["models"]), bool(obj["meta_features"]), np.asarray(obj["mean"], dtype=float),
                   np.asarray(obj["scale"], dtype=float), np.asarray(obj["coef"], dtype=float),
                   np.asarray(obj["intercept"], dtype=float), float(obj["C"]), dict(obj.get("inner_cv_log_loss", {})))


def fit_stacker(probas: list[np.ndarray], labels: np.ndarray, frame: pd.DataFrame, models: list[str],
                cfg: StackConfig) -> Stacker:
    """C from cfg.c_grid by a prompt-grouped inner CV (lowest log loss), then a fit on every row."""
    from sklearn.model_selection import GroupKFold

    from ensemble.core.folds import prompt_groups

    x = stack_features(probas, frame, cfg.meta_features)
    labels = np.asarray(labels, dtype=int)
    groups = prompt_groups(frame)
    k = min(cfg.inner_splits, len(np.unique(groups)))
    scores = {}
    if len(cfg.c_grid) > 1 and k >= 2:
        splits = list(GroupKFold(n_splits=k).split(x, labels, groups))
        for c in cfg.c_grid:
            pred = np.zeros((len(labels), 3))
            for tr, va in splits:
                pred[va] = _predict3(_pipeline(c).fit(x[tr], labels[tr]), x[va])
            scores[c] = log_loss(labels, pred)
    best = min(scores, key=scores.get) if scores else cfg.c_grid[0]
    pipe = _pipeline(best).fit(x, labels)
    scaler, lr = pipe[0], pipe[-1]
    coef, intercept = _full_classes(lr)
    return Stacker(list(models), cfg.meta_features, scaler.mean_.copy(), scaler.scale_.copy(), coef, intercept,
                   best, {str(c): round(v, 6) for c, v in scores.items()})


def _predict3(pipe, x: np.ndarray) -> np.ndarray:
    """predict_proba with all three classes (a training split may lack one, e.g. no ties)."""
    out = np.full((len(x), 3), 1e-6)
    out[:, pipe[-1].classes_] = pipe.predict_proba(x)
    return out / out.sum(axis=1, keepdims=True)


def _full_classes(lr) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients for all three classes; a class absent from the fit gets a very low intercept."""
    coef, intercept = np.zeros((3, lr.coef_.shape[1])), np.full(3, -30.0)
    if len(lr.classes_) == 2:  # binary: sklearn keeps one row, the logit of classes_[1]
        coef[lr.classes_[1]], intercept[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
        intercept[lr.classes_[0]] = 0.0
    else:
        coef[lr.classes_], intercept[lr.classes_] = lr.coef_, lr.intercept_
    return coef, intercept
