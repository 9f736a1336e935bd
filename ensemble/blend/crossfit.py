"""Cross-fitting, the honest score of any blender: each outer fold is blended by a blender fitted on
the other folds' OOF rows, so the blend is scored on rows that chose nothing."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

Fitter = Callable[[list[np.ndarray], np.ndarray, pd.DataFrame], object]


def crossfit(fit: Fitter, probas: list[np.ndarray], labels: np.ndarray, fold_of: np.ndarray,
             frame: pd.DataFrame) -> np.ndarray:
    """For each outer fold: fit on the other folds' OOF rows, predict the held-out fold."""
    folds = np.unique(fold_of)
    if len(folds) < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    out = np.full((len(labels), 3), np.nan)
    for k in folds:
        tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        fitted = fit([p[tr] for p in probas], labels[tr], frame.iloc[tr].reset_index(drop=True))
        out[va] = fitted.apply([p[va] for p in probas], frame.iloc[va].reset_index(drop=True))
    return out
