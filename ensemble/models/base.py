"""The one interface every base model speaks, so the OOF runner, blender and submit never know which model they hold."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from ensemble.core.config import from_dict, to_dict
from ensemble.core.io import write_json

CONFIG_FILE = "model.json"


class BaseModel(ABC):
    """scikit-learn-like: fit / predict_proba / save / load.

    Frames are parsed battle frames (see ensemble.data); probabilities are (n, 3) in the
    order [winner_model_a, winner_model_b, winner_tie], rows in the input order.
    """

    #: registry key, also the params.yaml section and the artifact name
    name: ClassVar[str]
    #: dataclass holding this model's params.yaml section
    Config: ClassVar[type]
    #: the attribute fit and load set (None before): what check_fitted looks at
    fitted_attr: ClassVar[str]

    def __init__(self, config=None, **overrides: Any):
        if config is None or isinstance(config, dict):
            merged = dict(config or {})
            merged.update(overrides)
            config = from_dict(self.Config, merged, self.name)
        self.config = config

    def check_fitted(self, what: str = "predict_proba") -> None:
        """The one predict-before-fit guard (scikit-learn's NotFittedError)."""
        if getattr(self, self.fitted_attr, None) is None:
            raise NotFittedError(f"{self.name}: {what} before fit or load")

    @abstractmethod
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> "BaseModel":
        ...

    @abstractmethod
    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        ...

    @abstractmethod
    def _save_state(self, path: Path) -> None:
        """Write the fitted state into `path` (a fresh directory)."""

    @abstractmethod
    def _load_state(self, path: Path) -> None:
        ...

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save_state(path)
        write_json(path / CONFIG_FILE, {"model": self.name, "config": to_dict(self.config)})

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "BaseModel":
        """Load a saved model; `overrides` change run-time settings such as the device."""
        path = Path(path)
        meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if meta["model"] != cls.name:
            raise ValueError(f"{path}: holds a {meta['model']!r} model, not {cls.name!r}")
        config = dict(meta["config"])
        config.update(overrides)
        model = cls(config)
        model._load_state(path)
        return model
