"""Level-2 stacker: a regularised multinomial logistic regression (scikit-learn) on the base models'
OOF log-probabilities, optionally with a few meta-features of the battle; its L2 strength is chosen by
a prompt-grouped inner CV on the rows it is fitted on. Stored as plain numbers (no pickles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble.blend.base import Blender
from ensemble.core.calibration import logistic_coef3, proba3
from ensemble.core.config import Each, Range
from ensemble.core.metrics import log_loss

#: meta-features the stacker may add: log-length difference A - B (characters) and prompt turns
META_FEATURES = ("len_diff", "turns")
LOG_FLOOR = 1e-6  # log-probability features are clipped here: a 1e-15 would be an outlier of -34


@dataclass
class StackConfig:
    c_grid: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])  # inverse L2 strengths tried
    meta_features: bool = True  # add META_FEATURES to the log-probabilities
    inner_splits: int = 5  # prompt-grouped inner folds that choose C

    constraints: ClassVar[dict] = {"inner_splits": Range(2), "c_grid": Each(Range(0, low_open=True), min_len=1)}


def meta_features(frame: pd.DataFrame) -> np.ndarray:
    """(n, 2): log(1 + chars of A) - log(1 + chars of B), and log(number of prompt turns)."""
    def chars(col: str) -> np.ndarray:
        return np.array([sum(len(t) for t in turns) for turns in frame[col]], dtype=float)

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


class StackBlender(Blender):
    name = "stack"
    Config = StackConfig
    about = "logistic regression on the models' log-probabilities (+ length/turn meta-features), C by inner CV"

    def features(self) -> list[str]:
        names = [f"log_{m}_{k}" for m in self.models for k in ("a", "b", "tie")]
        return names + (list(META_FEATURES) if self.config.meta_features else [])

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        """C from c_grid by a prompt-grouped inner CV (lowest log loss), then a fit on every row."""
        from sklearn.model_selection import GroupKFold

        from ensemble.core.folds import prompt_groups

        cfg = self.config
        x = stack_features(probas, frame, cfg.meta_features)
        groups = prompt_groups(frame)
        k = min(cfg.inner_splits, len(np.unique(groups)))
        scores = {}
        if len(cfg.c_grid) > 1 and k >= 2:
            splits = list(GroupKFold(n_splits=k).split(x, labels, groups))
            for c in cfg.c_grid:
                pred = np.zeros((len(labels), 3))
                for tr, va in splits:
                    pred[va] = proba3(_pipeline(c).fit(x[tr], labels[tr]), x[va])
                scores[c] = log_loss(labels, pred)
        self.c = min(scores, key=scores.get) if scores else cfg.c_grid[0]
        pipe = _pipeline(self.c).fit(x, labels)
        self.mean, self.scale = pipe[0].mean_.copy(), pipe[0].scale_.copy()
        self.coef, self.intercept = logistic_coef3(pipe[-1])
        self.inner_log_loss = {str(c): round(v, 6) for c, v in scores.items()}

    def _predict(self, probas, frame) -> np.ndarray:
        z = (stack_features(probas, frame, self.config.meta_features) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        return np.exp(logits)

    def summary(self) -> dict:
        return {"C": self.c}

    def _state(self) -> dict:
        return {"C": self.c, "features": self.features(), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "inner_cv_log_loss": self.inner_log_loss}

    def _set_state(self, state: dict) -> None:
        self.c = float(state["C"])
        self.mean, self.scale = np.asarray(state["mean"], dtype=float), np.asarray(state["scale"], dtype=float)
        self.coef, self.intercept = np.asarray(state["coef"], dtype=float), np.asarray(state["intercept"], dtype=float)
        self.inner_log_loss = dict(state.get("inner_cv_log_loss", {}))
        if self.coef.shape != (3, len(self.features())):
            raise ValueError(f"coef has shape {self.coef.shape}, expected (3, {len(self.features())})")
