"""The one interface every base model speaks, so the OOF runner, blender and submit never know which
model they hold: `fit(train, valid)`, `predict_proba(frame) -> (n, 3)`, `save(dir)`, `load(dir)`.

The public methods live here and do what every model needs (scikit-learn's pattern: checks in `fit`,
the model's own work in `_fit`): the labels are checked, the classes a fit saw are recorded, and a
class the training rows never held (no ties in most preference data outside the arena) is predicted
at a documented floor instead of ~1e-15, which would cost ~34 nats on the first tie.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError

from ensemble.core.cache import RunCache
from ensemble.core.calibration import floor_absent_classes
from ensemble.core.config import AnyOf, Choice, ConfigError, Each, Range, from_dict, to_dict
from ensemble.core.data import (
    SWAP_INDEX,
    DataError,
    class_counts,
    format_counts,
    swap_ab,
    turn_frame,
    unswap_proba,
)
from ensemble.core.io import write_json

CONFIG_FILE = "model.json"
#: the project modules every model learns with: this interface, the data contract, the calibration,
#: the metrics and inner splits it uses, the targets and the swap passes
LEARNS_WITH = ("ensemble", "ensemble.models.base", "ensemble.core.data", "ensemble.core.calibration",
               "ensemble.core.metrics", "ensemble.core.folds", "ensemble.core.targets", "ensemble.core.position")
#: the libraries whose versions change every model's numbers (the calibration's)
LIBRARIES = ("numpy", "scipy", "scikit-learn")
#: the folder, beside fold_0 .. fold_{K-1}, of the model `refit_full` fits on every training row
REFIT_DIR = "full"


@dataclass
class FoldBudget:
    """The keys every model's params section has (its Config subclasses this): which of the K folds
    it trains (`all`, or a list such as [0]: its OOF then covers those folds' rows only) and whether
    one more model is fitted on every training row (`refit_full`: AutoGluon's name), which test
    predictions, submit, the bundle and the Judge then use instead of the fold average. Neither
    changes what fold k learns, so neither is in a fold's fingerprint (BaseModel.budget_keys)."""

    folds: str | list[int] = "all"
    refit_full: bool = False

    constraints: ClassVar[dict] = {"folds": AnyOf(Choice("all"), Each(Range(0), min_len=1))}


class BaseModel(ABC):
    """Frames are parsed battle frames (ensemble.core.data); probabilities are (n, 3) in the order
    [winner_model_a, winner_model_b, winner_tie], rows in the input order."""

    #: registry key, also the params.yaml section and the artifact name
    name: ClassVar[str]
    #: dataclass holding this model's params.yaml section
    Config: ClassVar[type]
    #: the attribute _fit and _load_state set (None before): what check_fitted looks at
    fitted_attr: ClassVar[str]
    #: config keys that change where or in what batches a fitted model runs, not what it learns
    #: (devices, inference budgets): not in its fingerprint, taken from today's params at load
    runtime_keys: ClassVar[tuple[str, ...]] = ()
    #: run-time keys that change the predictions though not the model (swap TTA's share): not in the
    #: fingerprint, but in the keys of the OOF runner's cached predictions
    prediction_keys: ClassVar[tuple[str, ...]] = ("swap_tta_share",)
    #: the project modules whose code decides what this model learns (its fingerprint's code part); every
    #: project module it imports is listed here or is plumbing (ensemble.core.fingerprint.PLUMBING)
    learns_with: ClassVar[tuple[str, ...]] = LEARNS_WITH
    #: the installed distributions whose versions change its numbers (its fingerprint's libraries part)
    libraries: ClassVar[tuple[str, ...]] = LIBRARIES
    #: keys of the fold budget (FoldBudget): which folds train and whether a refit follows; not what
    #: a fold learns, so not in its fingerprint
    budget_keys: ClassVar[tuple[str, ...]] = ("folds", "refit_full")
    #: "module:function" merging the K fold models into one for a single inference pass (None: not supported)
    merger: ClassVar[str | None] = None

    def __init__(self, config=None, cache: RunCache | None = None, **overrides: Any):
        if config is None or isinstance(config, dict):
            merged = dict(config or {})
            merged.update(overrides)
            config = from_dict(self.Config, merged, self.name)
        self.config = config
        #: the run's caches (ensemble.core.cache): shared by the folds of one run, never global
        self.cache = cache if cache is not None else RunCache()
        self.classes_: list[int] | None = None  # classes the training rows held
        self.n_train_: int = 0

    # -- what every model does ------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> BaseModel:
        """Train on `train`; `valid` (the fold's OOF rows) may be shown to the model but must never
        choose anything, or the OOF score flatters it."""
        if len(train) == 0:
            raise DataError(f"{self.name}: the training frame is empty")
        counts = class_counts(train["label"])
        present = [k for k, n in enumerate(counts.values()) if n]
        if len(present) < 2:
            raise DataError(f"{self.name}: the training rows hold a single class ({format_counts(counts)}); "
                            f"a preference model needs at least two")
        if getattr(self.config, "swap_augment", False) or getattr(self.config, "swap_tta", False):
            # trained on (or averaged with) the A/B-swapped battles: an A win seen is a B win seen
            present = sorted(set(present) | {SWAP_INDEX[k] for k in present})
        self.classes_, self.n_train_ = present, int(len(train))
        # plain-string cells (a hand-built frame) become one-turn lists: every model sees one layout
        self._fit(turn_frame(train), None if valid is None else turn_frame(valid))
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        self.check_fitted()
        if len(frame) == 0:
            return np.zeros((0, 3))
        frame = turn_frame(frame)
        share = float(getattr(self.config, "swap_tta_share", 1.0)) if getattr(self.config, "swap_tta", False) else 1.0
        if share < 1.0:  # swap TTA on the least certain share only (0: on none)
            proba = self._selective_tta(frame, share)
        else:
            proba = np.asarray(self._predict_proba(frame), dtype=np.float64)
        return floor_absent_classes(proba, self.classes_, self.n_train_)

    def _selective_tta(self, frame: pd.DataFrame, share: float) -> np.ndarray:
        """Swap TTA on the least certain `share` of the battles only (WSDM 2025 1st place ran the swapped pass
        on the third most uncertain): a single pass on every battle, then a single pass on the swapped copies of
        the ceil(share * n) whose top probability is lowest, averaged with their first pass: n + share * n
        passes. The two passes are averaged after the calibration (fitted for two passes), where share 1 (the
        model's own TTA) averages before it: close, not identical."""
        from ensemble.core.position import single_pass

        with single_pass(self):
            proba = np.asarray(self._predict_proba(frame), dtype=np.float64)
            rows = np.sort(np.argsort(proba.max(axis=1), kind="stable")[: int(np.ceil(share * len(frame)))])
            if len(rows):
                swapped = self._predict_proba(swap_ab(frame.iloc[rows].reset_index(drop=True)))
                proba[rows] = 0.5 * (proba[rows] + unswap_proba(np.asarray(swapped, dtype=np.float64)))
        return proba

    def check_fitted(self, what: str = "predict_proba") -> None:
        """The one predict-before-fit guard (scikit-learn's NotFittedError)."""
        if getattr(self, self.fitted_attr, None) is None:
            raise NotFittedError(f"{self.name}: {what} before fit or load")

    def learned_config(self) -> dict:
        """The config without its run-time keys: what the fingerprint and submit's check compare."""
        return self.learned_view(to_dict(self.config))

    def learned_view(self, config: dict) -> dict:
        """A config mapping (this model's, or one saved with a fold) as the fingerprint sees it: no run-time
        keys, and no unused `distill` subsection (no teachers: it changes nothing the model learns)."""
        config = {k: v for k, v in config.items() if k not in self.runtime_keys + self.budget_keys}
        if not (config.get("distill") or {}).get("teachers"):
            config.pop("distill", None)
        return config

    def prediction_settings(self) -> dict:
        """This model's prediction keys and their values: what a cached prediction is keyed by, beside the fold."""
        return {k: getattr(self.config, k) for k in self.prediction_keys if hasattr(self.config, k)}

    def code_modules(self) -> tuple[str, ...]:
        """The modules this model's fits learn with (`learns_with`; a model adds those an option brings in)."""
        return self.learns_with

    def library_names(self) -> tuple[str, ...]:
        """The distributions whose versions change this model's numbers (`libraries`, plus an option's)."""
        return self.libraries

    def learns_from_valid(self) -> bool:
        """Whether a fit chooses anything on the `valid` rows it is shown (then they are part of what a
        fold learned from; by default they are not)."""
        return False
    def trained_folds(self, n_folds: int) -> list[int]:
        """The folds this model trains of the run's `n_folds` (its `folds` key; a config without the
        key trains all); a fold that does not exist is a ConfigError."""
        folds = getattr(self.config, "folds", "all")
        if folds == "all":
            return list(range(n_folds))
        missing = sorted({k for k in folds if k >= n_folds})
        if missing:
            raise ConfigError(f"params {self.name}.folds: {folds!r} names fold(s) {missing} that do not exist; "
                              f"the run has {n_folds} folds (folds.n_splits), numbered 0 to {n_folds - 1}")
        return sorted(set(folds))

    def refits(self) -> bool:
        """Whether this model is refitted on every training row after its folds (`refit_full`)."""
        return bool(getattr(self.config, "refit_full", False))

    def backbone_identity(self) -> str | None:
        """Digest of the pretrained weights a fit starts from (None: no backbone)."""
        return None

    def check_resources(self, frames: list[pd.DataFrame]) -> None:  # noqa: B027  (an optional hook: a no-op by default)
        """Called by the OOF runner with every frame a run will show the model (training rows, test
        rows) before any fold trains: refuse what cannot fit (memory) before hours of work."""

    # -- each model's own work ------------------------------------------------------------------
    @abstractmethod
    def _fit(self, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        ...

    @abstractmethod
    def _predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, 3) probabilities of a non-empty frame."""

    @abstractmethod
    def _save_state(self, path: Path) -> None:
        """Write the fitted state into `path` (a fresh directory): plain numbers, no pickles."""

    @abstractmethod
    def _load_state(self, path: Path) -> None:
        ...

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save_state(path)
        write_json(path / CONFIG_FILE, {"model": self.name, "config": to_dict(self.config),
                                        "classes": self.classes_, "train_rows": self.n_train_})

    @classmethod
    def load(cls, path: str | Path, cache: RunCache | None = None, runtime: dict | None = None) -> BaseModel:
        """Load a saved model; `runtime` (today's params section) sets its run-time keys (devices,
        inference budgets), so a model trained on one device predicts on others without retraining."""
        path = Path(path)
        meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        if meta["model"] != cls.name:
            raise ValueError(f"{path}: holds a {meta['model']!r} model, not {cls.name!r}")
        config = dict(meta["config"])
        config.update({k: v for k, v in (runtime or {}).items() if k in cls.runtime_keys})
        model = cls(config, cache=cache)
        model.classes_, model.n_train_ = meta.get("classes") or [0, 1, 2], int(meta.get("train_rows", 0))
        model._load_state(path)
        return model
