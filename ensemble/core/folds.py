"""Leak-free folds: stratified by label, grouped by prompt, written once and shared by every model."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ensemble.core.config import Range, from_dict
from ensemble.core.data import DataError, as_turns


def prompt_key(turns) -> str:
    """The grouping key of a battle: its first prompt turn, Unicode-NFKC-normalised, case-folded, with
    every run of white space one space. "Hello world", "hello  world" and "Hello\r\nworld" are one
    prompt, and conversations that continue the same first turn are one group."""
    first = as_turns(turns)[0]
    return " ".join(unicodedata.normalize("NFKC", first).casefold().split())


#: a frame column holding prompt_groups() of the frame it was computed on: the blend stage adds it
#: once, and every subset of its rows then numbers those integers instead of normalising the prompts
GROUP_COLUMN = "prompt_group"


def prompt_groups(frame: pd.DataFrame) -> np.ndarray:
    """One group id per distinct prompt key: the arena repeats prompts, so they must not straddle train
    and valid. The same groups set the folds, the bootstrap unit, the calibration split and every inner CV.
    Numbered in order of first appearance in `frame` (from GROUP_COLUMN when the frame has it)."""
    if GROUP_COLUMN in frame:
        return pd.factorize(frame[GROUP_COLUMN])[0]
    return pd.factorize(frame["prompt"].map(prompt_key))[0]


def labelled_splits(groups: np.ndarray, labelled: np.ndarray,
                    split: Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray]]]
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner (fit rows, held-out rows) splits in which only labelled rows are held out, so a
    pseudo-labelled row trains but never chooses (rounds, C, a calibration). `split` splits the
    labelled rows by their `groups` (it gets groups[labelled], yields index pairs into them).
    Each split fits on every row whose prompt is not held out: a pseudo-labelled row asking a
    held-out prompt neither trains nor chooses (its teacher saw that prompt's labels). With every
    row labelled, these are `split(groups)`'s own splits."""
    rows = np.flatnonzero(labelled)
    out = []
    for _, held in split(groups[rows]):
        held = rows[np.sort(held)]
        out.append((np.flatnonzero(~np.isin(groups, groups[held])), held))
    return out


@dataclass
class FoldsConfig:
    n_splits: int = 5
    seed: int = 42

    constraints: ClassVar[dict] = {"n_splits": Range(2)}


def make_folds(frame: pd.DataFrame, n_splits: int = 5, seed: int = 42) -> pd.DataFrame:
    if "label" not in frame:
        raise DataError("folds need a labelled training frame")
    from_dict(FoldsConfig, {"n_splits": n_splits, "seed": seed}, "folds")  # the one check of the values
    groups = prompt_groups(frame)
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise DataError(f"only {n_groups} distinct prompts for {n_splits} prompt-grouped folds; "
                        f"lower folds.n_splits or add data")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(frame), -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(frame)), frame["label"], groups)):
        fold[valid] = k
    return pd.DataFrame({"id": frame["id"].astype(str).to_numpy(), "fold": fold})


def attach_folds(frame: pd.DataFrame, folds: pd.DataFrame) -> np.ndarray:
    """Fold of each row of `frame`, checked: a frame/folds mismatch would silently misalign OOF rows."""
    mapping = dict(zip(folds["id"].astype(str), folds["fold"]))
    missing = [i for i in frame["id"] if i not in mapping]
    if missing:
        raise DataError(f"folds file has no fold for {len(missing)} training ids (e.g. {', '.join(missing[:5])}); "
                        f"rerun the folds stage")
    return frame["id"].map(mapping).to_numpy(dtype=np.int64)
