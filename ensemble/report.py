"""Plots for `dvc plots show`: per-class reliability curves and the confusion matrix of the blend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import TARGETS
from .io import write_csv

CLASS_NAMES = ("model_a", "model_b", "tie")


def reliability(proba: np.ndarray, hit: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted probability vs observed frequency per equal-width bin (empty bins skipped)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            rows.append({"predicted": round(float(proba[mask].mean()), 6),
                         "observed": round(float(hit[mask].mean()), 6), "count": int(mask.sum())})
    return pd.DataFrame(rows, columns=["predicted", "observed", "count"])


def write_plots(blend_oof: pd.DataFrame, out_dir: Path, bins: int = 10) -> list[Path]:
    labels = blend_oof["label"].to_numpy(dtype=int)
    proba = blend_oof[list(TARGETS)].to_numpy(dtype=float)
    written = []
    for j, col in enumerate(TARGETS):
        path = out_dir / f"calibration_{col}.csv"
        write_csv(path, reliability(proba[:, j], labels == j, bins))
        written.append(path)
    names = np.asarray(CLASS_NAMES)
    path = out_dir / "confusion.csv"
    write_csv(path, pd.DataFrame({"actual": names[labels], "predicted": names[proba.argmax(axis=1)]}))
    written.append(path)
    return written
