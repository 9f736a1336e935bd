"""The one interface every blender speaks (as every base model speaks ensemble.models.base), so the blend
stage, cross-fitting, the report and submit never know which blender they hold:

    fit(probas, labels, frame) -> self     probas: one (n, 3) OOF matrix per model, in `models` order
    predict(probas, frame) -> (n, 3)       frame: the battles (texts; `fold` while fitting on OOF rows)
    to_json() / from_json(obj)             plain numbers in blend.json: nothing to unpickle at submit
    summary()                              a few numbers for tables ({"temperature": 0.93}, {"C": 0.1})
    model_weights()                        each model's share when the blend is a weighted average, else None

Like a base model, a blender records the classes its rows held and predicts an absent one (no ties in
the data) at the add-one floor (ensemble.core.calibration.floor_absent_classes). Every blender also fits,
on the same rows, the rule for degenerate battles (identical or empty answers, ensemble.core.degenerate)
and predicts those rows by it (`blend.degenerate`), so cross-fitting keeps the rule honest too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ensemble.core.calibration import floor_absent_classes
from ensemble.core.config import from_dict, to_dict
from ensemble.core.degenerate import DegenerateConfig, DegenerateRule


class Blender(ABC):
    #: registry key (ensemble.blend.BLENDERS), `blend.method`, and the blender's params subsection blend.<name>
    name: ClassVar[str]
    #: dataclass of its `blend.<name>` params subsection
    Config: ClassVar[type]
    #: one line for the CLI's list of methods
    about: ClassVar[str] = ""
    #: whether it fits and applies the degenerate-battle rule (blend.degenerate)
    degenerate_rule: ClassVar[bool] = True

    def __init__(self, models: list[str], config: Any = None, blend: Any = None):
        self.models = list(models)
        if config is None and blend is not None:
            config = getattr(blend, self.name, None)
        self.config = from_dict(self.Config, config, f"blend.{self.name}") if config is None or isinstance(
            config, dict) else config
        #: the whole blend params section (ensemble.blend.config.BlendConfig), for a blender that builds others
        self.blend = blend
        self.classes_: list[int] = [0, 1, 2]
        self.n_rows_ = 0
        self.degenerate_config = getattr(blend, "degenerate", None) or DegenerateConfig()
        self.degenerate_: DegenerateRule | None = None

    def fit(self, probas: list[np.ndarray], labels: np.ndarray, frame: pd.DataFrame) -> Blender:
        if len(probas) != len(self.models):
            raise ValueError(f"{self.name}: {len(probas)} probability matrices for {len(self.models)} models")
        labels = np.asarray(labels, dtype=np.int64)
        self.classes_, self.n_rows_ = sorted(int(c) for c in np.unique(labels)), int(len(labels))
        self._fit([np.asarray(p, dtype=np.float64) for p in probas], labels, frame)
        cfg, self.degenerate_ = self.degenerate_config, None
        if self.degenerate_rule and cfg.mode != "off" and frame is not None and "response_a" in frame:
            rule = DegenerateRule.fit(frame, labels, cfg.prior_weight)
            if cfg.mode == "auto":
                rule.choose(self._predict([np.asarray(p, dtype=np.float64) for p in probas], frame), labels, frame)
            self.degenerate_ = rule
        return self

    def predict(self, probas: list[np.ndarray], frame: pd.DataFrame | None = None) -> np.ndarray:
        p = self._predict([np.asarray(q, dtype=np.float64) for q in probas], frame)
        if self.degenerate_ is not None and frame is not None and "response_a" in frame:
            p = self.degenerate_.apply(p, frame)
        return floor_absent_classes(p / p.sum(axis=1, keepdims=True), self.classes_, self.n_rows_)

    def summary(self) -> dict:
        return {}

    def model_weights(self) -> dict[str, float] | None:
        return None

    def used_models(self) -> list[str]:
        """The models whose predictions change the blend (submit predicts only these)."""
        weights = self.model_weights()
        return self.models if weights is None else [m for m in self.models if weights.get(m, 0.0) > 0]

    # -- each blender's own work
    @abstractmethod
    def _fit(self, probas: list[np.ndarray], labels: np.ndarray, frame: pd.DataFrame) -> None:
        ...

    @abstractmethod
    def _predict(self, probas: list[np.ndarray], frame: pd.DataFrame | None) -> np.ndarray:
        ...

    @abstractmethod
    def _state(self) -> dict:
        """The fitted numbers, JSON-ready."""

    @abstractmethod
    def _set_state(self, state: dict) -> None:
        ...

    # -- persistence
    def to_json(self) -> dict:
        return {"method": self.name, "models": self.models, "config": to_dict(self.config),
                "classes": self.classes_, "rows": self.n_rows_, "state": self._state(),
                "degenerate": self.degenerate_.to_json() if self.degenerate_ is not None else None}

    @classmethod
    def from_json(cls, obj: dict) -> Blender:
        blender = cls(list(obj["models"]), dict(obj.get("config") or {}))
        blender.classes_, blender.n_rows_ = [int(c) for c in obj["classes"]], int(obj["rows"])
        blender._set_state(obj["state"])
        if obj.get("degenerate"):
            blender.degenerate_ = DegenerateRule.from_json(obj["degenerate"])
        return blender
