"""The classic blend: non-negative weights summing to 1 that minimise log loss of the linear pool of
the models' probabilities, then a temperature on top (the classic hand-set 0.2 LightGBM / 0.8 LLM is
one point of this family)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar

from ensemble.blend.base import Blender
from ensemble.core.metrics import EPS, log_loss


def apply_blend(probas: list[np.ndarray], weights, temperature: float = 1.0) -> np.ndarray:
    """Linear pool of the models' probabilities, then softmax(log p / T)."""
    p = np.tensordot(np.asarray(weights, dtype=float), np.stack(probas), axes=1)
    p = np.clip(p, EPS, None)
    if temperature != 1.0:
        logits = np.log(p) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def fit_weights(probas: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """SLSQP on the simplex. Log loss of a linear pool only needs each model's probability of the
    true class, so every evaluation is an (m, n) product: seconds even at Kaggle scale."""
    m = len(probas)
    if m == 1:
        return np.ones(1)
    rows = np.arange(len(labels))
    true_p = np.stack([p[rows, labels] for p in probas])  # (m, n)

    def loss(w):
        return -np.mean(np.log(np.clip(w @ true_p, EPS, None)))

    def grad(w):
        return -(true_p / np.clip(w @ true_p, EPS, None)).mean(axis=1)

    best = None
    starts = [np.full(m, 1 / m)] + [np.eye(m)[i] * 0.8 + 0.2 / m for i in range(m)]
    for w0 in starts:
        res = minimize(loss, w0, jac=grad, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
                       options={"maxiter": 500, "ftol": 1e-12})
        if best is None or res.fun < best.fun:
            best = res
    w = np.clip(best.x, 0, None)
    return w / w.sum()


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """softmax(log p / T) with T in [0.2, 5] minimising log loss; 1 unless that helps."""
    res = minimize_scalar(lambda t: log_loss(labels, apply_blend([proba], np.ones(1), t)),
                          bounds=(0.2, 5.0), method="bounded", options={"xatol": 1e-4})
    t = float(res.x)
    return t if log_loss(labels, apply_blend([proba], np.ones(1), t)) < log_loss(labels, proba) else 1.0


@dataclass
class WeightsConfig:
    temperature: bool = True  # fit a temperature on top of the weighted average


class WeightsBlender(Blender):
    name = "weights"
    Config = WeightsConfig
    about = "non-negative weights summing to 1 (SLSQP on log loss), then a temperature"

    weights: np.ndarray
    temperature: float = 1.0

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        self.weights = fit_weights(probas, labels)
        self.temperature = (fit_temperature(apply_blend(probas, self.weights), labels)
                            if self.config.temperature else 1.0)

    def _predict(self, probas, frame) -> np.ndarray:
        return apply_blend(probas, self.weights, self.temperature)

    def model_weights(self) -> dict[str, float]:
        return {m: float(w) for m, w in zip(self.models, self.weights)}

    def summary(self) -> dict:
        return {"temperature": round(float(self.temperature), 4)}

    def _state(self) -> dict:
        return {"weights": self.model_weights(), "temperature": float(self.temperature)}

    def _set_state(self, state: dict) -> None:
        self.weights = np.array([state["weights"][m] for m in self.models], dtype=float)
        self.temperature = float(state["temperature"])
