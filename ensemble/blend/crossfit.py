"""Cross-fitting, the honest score of any blender: each outer fold is blended by a blender fitted on
the other folds' OOF rows, so the blend is scored on rows that chose nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ensemble.blend.base import Blender


def crossfit(make: Callable[[], Blender], probas: list[np.ndarray], labels: np.ndarray, fold_of: np.ndarray,
             frame: pd.DataFrame, fitted: list[Blender] | None = None) -> np.ndarray:
    """For each fold: a fresh blender fitted on the other folds' rows predicts the held-out fold. The
    frames it sees carry their rows' `fold`, so a blender that chooses by cross-fitting itself
    (ensemble.blend.select) nests inside the same folds. `fitted`, when given, receives each fold's blender."""
    fold_of = np.asarray(fold_of)
    folds = np.unique(fold_of)
    if len(folds) < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    frame = frame.reset_index(drop=True).assign(fold=fold_of)
    out = np.full((len(labels), 3), np.nan)
    for k in folds:
        tr, va = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        blender = make().fit([p[tr] for p in probas], labels[tr], frame.iloc[tr].reset_index(drop=True))
        out[va] = blender.predict([p[va] for p in probas], frame.iloc[va].reset_index(drop=True))
        if fitted is not None:
            fitted.append(blender)
    return out
