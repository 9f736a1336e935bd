"""Position bias: does a model's verdict depend on which answer is shown first? Swap TTA exists because of
it, so it is measured, per model, on each fold's held-out rows:

    first   = the model's single pass (swap TTA off) on the battles as given
    swapped = its single pass on the same battles with A and B exchanged, put back in the original order
    flip_share = share of battles whose argmax differs between the two (a verdict that follows the order)
    mean_gap   = mean |P(A) in the first pass - P(the same answer wins) in the swapped pass|

A model that is exactly A/B symmetric scores 0 on both. The figures are of the single pass even when the model
submits with swap TTA (which averages the two passes and is symmetric by construction): they say how much the
TTA has to correct. Measured on up to MAX_ROWS held-out battles per fold. Written by the OOF runner into the
OOF file's metadata, read by the blend stage into metrics.json (`models.<name>.position_bias`) and shown in
the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.data import swap_ab, unswap_proba

#: key of the OOF parquet file's metadata (pandas attrs) holding the run's position-bias figures
ATTR = "position_bias"


@contextlib.contextmanager
def single_pass(model):
    """The model with swap TTA switched off (every model reads `config.swap_tta` when it predicts)."""
    config = model.config
    if getattr(config, "swap_tta", False):
        model.config = dataclasses.replace(config, swap_tta=False)
    try:
        yield model
    finally:
        model.config = config


def passes(model, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(first, swapped): the single-pass probabilities of the battles and of their swaps, in battle order."""
    with single_pass(model) as m:
        first = np.asarray(m.predict_proba(frame), dtype=np.float64)
        swapped = unswap_proba(np.asarray(m.predict_proba(swap_ab(frame)), dtype=np.float64))
    return first, swapped


def counts(first: np.ndarray, swapped: np.ndarray) -> dict:
    """Sums that add up over folds: rows, flips, the summed |P(A) gap|."""
    return {"rows": int(len(first)), "flips": int((first.argmax(1) != swapped.argmax(1)).sum()),
            "gap_sum": float(np.abs(first[:, 0] - swapped[:, 0]).sum())}


def summarise(parts: list[dict]) -> dict:
    rows = sum(p["rows"] for p in parts)
    return {"rows": rows, "flip_share": round(sum(p["flips"] for p in parts) / max(rows, 1), 6),
            "mean_gap": round(sum(p["gap_sum"] for p in parts) / max(rows, 1), 6)}


#: held-out battles per fold the two single passes are run on (evenly spaced): the LLM's swapped pass has no
#: cached frozen states, so every fold's full valid part would add a frozen pass per fold; 64 x 5 folds
#: give the flip share to about +-0.03
MAX_ROWS = 64


def kept_counts(path: Path, key: str) -> dict | None:
    """A fold's counts kept in `path` under the fold's fingerprint `key` (a reused fold is not predicted
    again); None when absent or stale."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["counts"]
    except (OSError, ValueError, KeyError):
        pass
    return None


def fold_counts(model, valid: pd.DataFrame) -> dict:
    """A fold model's counts on (up to MAX_ROWS of) its held-out rows."""
    if len(valid) > MAX_ROWS:
        valid = valid.iloc[np.linspace(0, len(valid) - 1, MAX_ROWS).round().astype(int)].reset_index(drop=True)
    return counts(*passes(model, valid))


def read(path: Path) -> dict | None:
    """The position-bias figures in an OOF file's metadata (None for a file without them, e.g. from
    elsewhere)."""
    from ensemble.core.predictions import file_attr

    value = file_attr(path, ATTR)
    return value if isinstance(value, dict) else None
