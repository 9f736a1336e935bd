"""The two blends every other one must beat, as blenders so that the nested choice (ensemble.blend.select)
can fall back to them: the class prior of the rows it is fitted on, and the single best model there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ensemble.blend.base import Blender
from ensemble.core.metrics import log_loss


@dataclass
class NoConfig:
    pass


class PriorBlender(Blender):
    name = "prior"
    Config = NoConfig
    about = "the class frequencies of the rows it is fitted on (ignores every model)"
    degenerate_rule = False  # the reference every score is compared with: the frequencies and nothing else

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        self.prior = np.bincount(labels, minlength=3) / len(labels)

    def _predict(self, probas, frame) -> np.ndarray:
        n = len(probas[0]) if probas else (len(frame) if frame is not None else 0)
        return np.tile(np.clip(self.prior, 1e-12, None), (n, 1))

    def model_weights(self) -> dict[str, float]:
        return {m: 0.0 for m in self.models}

    def summary(self) -> dict:
        return {"prior": [round(float(v), 6) for v in self.prior]}

    def _state(self) -> dict:
        return {"prior": self.prior.tolist()}

    def _set_state(self, state: dict) -> None:
        self.prior = np.asarray(state["prior"], dtype=float)


class BestBlender(Blender):
    name = "best"
    Config = NoConfig
    about = "the single model with the lowest log loss on the rows it is fitted on"

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        losses = [log_loss(labels, p) for p in probas]
        self.best = self.models[int(np.argmin(losses))]

    def _predict(self, probas, frame) -> np.ndarray:
        return probas[self.models.index(self.best)]

    def model_weights(self) -> dict[str, float]:
        return {m: float(m == self.best) for m in self.models}

    def summary(self) -> dict:
        return {"model": self.best}

    def _state(self) -> dict:
        return {"model": self.best}

    def _set_state(self, state: dict) -> None:
        if state["model"] not in self.models:
            raise ValueError(f"best model {state['model']!r} is not one of {self.models}")
        self.best = state["model"]
