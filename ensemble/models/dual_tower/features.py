"""The dual tower's per-side length features and their scaler."""

from __future__ import annotations

import numpy as np
import pandas as pd


class TowerFeatures:
    """Per-side length features for each tower ([a_* + p_*] for A, the matching [b_* + p_*] for B),
    signed-log1p'd and standardized with one scaler fitted on both sides of the training rows, so
    tower B's vector means exactly what tower A's does (the swap symmetry needs that)."""

    def __init__(self, names: list[str] | None = None, mean=None, std=None):
        self.names, self.mean, self.std = names, mean, std

    @staticmethod
    def _raw(frame: pd.DataFrame, cache=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        from ensemble.core.features import numeric_features

        table = numeric_features(frame, cache)
        cols = set(table.columns)
        side = [c[2:] for c in table.columns if c.startswith("a_") and f"b_{c[2:]}" in cols]
        prompt = [c for c in table.columns if c.startswith("p_")]
        a = table[[f"a_{s}" for s in side] + prompt].to_numpy(np.float64)
        b = table[[f"b_{s}" for s in side] + prompt].to_numpy(np.float64)
        return a, b, side + prompt

    @staticmethod
    def _log(x: np.ndarray) -> np.ndarray:
        return np.sign(x) * np.log1p(np.abs(np.nan_to_num(x, nan=0.0, posinf=1e12, neginf=-1e12)))

    def fit(self, frame: pd.DataFrame, cache=None) -> TowerFeatures:
        a, b, names = self._raw(frame, cache)
        both = self._log(np.concatenate([a, b]))
        self.names, self.mean, self.std = names, both.mean(0), both.std(0)
        self.std = np.where(self.std > 1e-8, self.std, 1.0)
        return self

    def transform(self, frame: pd.DataFrame, cache=None) -> np.ndarray:
        """(n, 2, F) float32: [:, 0] tower A, [:, 1] tower B."""
        a, b, names = self._raw(frame, cache)
        if names != self.names:
            raise RuntimeError("numeric feature columns changed since this model was trained "
                               "(ensemble.core.features was edited); retrain the dual_tower model")
        out = [(self._log(x) - self.mean) / self.std for x in (a, b)]
        return np.stack(out, axis=1).astype(np.float32)

    def to_json(self) -> dict:
        return {"names": self.names, "mean": list(map(float, self.mean)), "std": list(map(float, self.std))}

    @classmethod
    def from_json(cls, d: dict) -> TowerFeatures:
        return cls(d["names"], np.asarray(d["mean"]), np.asarray(d["std"]))
