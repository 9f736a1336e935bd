"""What a model trains toward: hard labels, or soft targets a teacher gave (distillation, pseudo-labels).

A training frame may carry three extra columns, `soft_a`, `soft_b`, `soft_tie` (a probability vector
per battle), and a boolean `pseudo` column (an unlabelled battle whose `label` is only its teacher's
argmax). The OOF runner writes them (ensemble.pipeline.distill); a model reads them through `training_targets`,
so a frame without them trains exactly as before. Pseudo rows never calibrate: the held-out split that
fits calibrations and picks checkpoints holds labelled rows only (`labelled_rows`), and a pseudo row asking
a held-out prompt is left out. What is chosen inside the training rows by their training loss (LightGBM's
early-stopping round, the LLM probe's C) is chosen on the targets, soft ones included: all of it inside
the fold's training part, never on its valid rows.

The temperature sharpens or softens the teacher's targets only (the student's logits are not divided by
T, and there is no T^2 factor): with T > 1 the student learns softer targets, and its calibration, fitted
on held-out labelled rows, corrects what it can. The margin filter reads the teacher's probabilities
before the temperature.

The mix of label and teacher is the usual distillation loss: (1 - w) * CE(label) + w * KL(teacher_T ||
student) has, up to a constant, the gradient of one cross-entropy toward q = (1 - w) * onehot(label) +
w * teacher_T, so every model trains on q: the transformers with torch's probability targets, LightGBM
and the linear probe on three weighted copies of each battle (one per class, weight q_c).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble.core.config import Choice, Range
from ensemble.core.data import SWAP_INDEX

SOFT_COLUMNS = ("soft_a", "soft_b", "soft_tie")
PSEUDO_COLUMN = "pseudo"
TARGET_COLUMNS = (*SOFT_COLUMNS, PSEUDO_COLUMN)


@dataclass
class DistillConfig:
    """A model's `distill:` subsection (off while `teachers` is empty)."""

    teachers: list[str] = field(default_factory=list)  # registered models or teachers/<name>/ from elsewhere
    weight: float = 0.5  # w: target = (1 - w) * label + w * teacher (1 = the teacher only)
    temperature: float = 1.0  # T: teacher probabilities p^(1/T), renormalised (T > 1 softens)
    # nested: each student fold's soft labels from teachers fitted without its valid rows (honest)
    # leaky: the teachers' plain OOF predictions (the competitions' practice; scores optimistic)
    mode: str = "nested"
    pseudo: bool = True  # with data.unlabelled: the unlabelled battles join training with the teachers' labels
    pseudo_margin: float = 0.0  # drop pseudo-labels with |pA - pB| below this (0 = keep all)

    constraints: ClassVar[dict] = {"weight": Range(0, 1), "temperature": Range(0, low_open=True),
                                   "mode": Choice("nested", "leaky"), "pseudo_margin": Range(0, 1)}

    def problems(self):
        if len(set(self.teachers)) != len(self.teachers):
            yield "teachers", f"{self.teachers} names a teacher twice"

    @property
    def on(self) -> bool:
        return bool(self.teachers)


def sharpen(proba: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T), renormalised: softmax(log p / T), the temperature of distillation."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)) / temperature
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def has_soft(frame: pd.DataFrame) -> bool:
    return SOFT_COLUMNS[0] in frame


def training_targets(frame: pd.DataFrame) -> np.ndarray:
    """(n,) int labels for a plain frame, (n, 3) float targets when it carries soft columns."""
    if has_soft(frame):
        return frame[list(SOFT_COLUMNS)].to_numpy(dtype=np.float64)
    return frame["label"].to_numpy(dtype=np.int64)


def swap_targets(targets: np.ndarray) -> np.ndarray:
    """The targets of the A/B-swapped battles: labels mapped, or probability columns exchanged."""
    targets = np.asarray(targets)
    return targets[:, SWAP_INDEX] if targets.ndim == 2 else np.asarray(SWAP_INDEX)[targets]


def labelled_rows(frame: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows with a real label (not pseudo-labelled)."""
    if PSEUDO_COLUMN not in frame:
        return np.ones(len(frame), dtype=bool)
    return ~frame[PSEUDO_COLUMN].to_numpy(dtype=bool)


def weighted_copies(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, labels, weights) for learners that take hard labels and sample weights (LightGBM, logistic
    regression): each of the n rows three times, class-major (copy c of row i at c * n + i), weighted by
    its target probability of class c. Hard labels give one copy of weight 1 and two of weight 0."""
    targets = np.asarray(targets)
    n = len(targets)
    if targets.ndim == 1:
        targets = np.eye(3)[targets]
    rows = np.tile(np.arange(n), 3)
    labels = np.repeat(np.arange(3), n)
    return rows, labels, targets.T.reshape(-1).astype(np.float64)
