"""Greedy ensemble selection with replacement (Caruana et al., "Ensemble selection from libraries of
models", ICML 2004; AutoGluon's WeightedEnsemble): start from nothing and, `rounds` times, add the model
whose addition to the running average most lowers log loss; a model may be added again. The weights are
the counts over the rounds: sparse, non-negative, and with few rounds hard to overfit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble.blend.base import Blender
from ensemble.blend.weights import apply_blend
from ensemble.core.config import Range
from ensemble.core.metrics import EPS


@dataclass
class GreedyConfig:
    rounds: int = 25  # additions with replacement; weights are multiples of 1/rounds

    constraints: ClassVar[dict] = {"rounds": Range(1)}


class GreedyBlender(Blender):
    name = "greedy"
    Config = GreedyConfig
    about = "greedy ensemble selection with replacement (Caruana 2004): weights = how often a model was picked"

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        rows = np.arange(len(labels))
        true_p = np.stack([p[rows, labels] for p in probas])  # (m, n): a linear pool's log loss needs only these
        counts = np.zeros(len(probas), dtype=np.int64)
        total = np.zeros(len(labels))
        for r in range(1, self.config.rounds + 1):
            losses = -np.log(np.clip((total + true_p) / r, EPS, None)).mean(axis=1)
            j = int(np.argmin(losses))  # ties go to the first model listed: deterministic
            counts[j] += 1
            total += true_p[j]
        self.weights = counts / counts.sum()

    def _predict(self, probas, frame) -> np.ndarray:
        return apply_blend(probas, self.weights)

    def model_weights(self) -> dict[str, float]:
        return {m: float(w) for m, w in zip(self.models, self.weights)}

    def _state(self) -> dict:
        return {"weights": self.model_weights()}

    def _set_state(self, state: dict) -> None:
        self.weights = np.array([state["weights"][m] for m in self.models], dtype=float)
