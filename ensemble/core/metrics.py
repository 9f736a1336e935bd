"""Scores shared by the blender, submit and the benchmarks (one definition of log loss)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from ensemble import TARGETS

EPS = 1e-15


def clip_normalize(proba: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Kaggle's scoring clips then renormalizes; doing the same keeps our numbers comparable."""
    p = np.clip(np.asarray(proba, dtype=np.float64), eps, 1 - eps)
    return p / p.sum(axis=1, keepdims=True)


def log_loss(labels: np.ndarray, proba: np.ndarray) -> float:
    p = clip_normalize(proba)
    return float(-np.mean(np.log(p[np.arange(len(labels)), np.asarray(labels, dtype=int)])))


def row_log_loss(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per-row log loss; its mean is metrics.log_loss (same clipping and renormalising)."""
    labels = np.asarray(labels, dtype=int)
    return -np.log(clip_normalize(proba)[np.arange(len(labels)), labels])


#: probabilities this close to the top one count as tied for it (a swap-averaged 50/50 is exactly tied)
TIE_TOLERANCE = 1e-9


def accuracy(labels: np.ndarray, proba: np.ndarray) -> float:
    """Share of rows whose verdict is right, where the verdict is the most probable class and a row
    whose top probability is shared by k classes (within TIE_TOLERANCE) earns 1/k if one of them is
    the label: the expected accuracy of breaking the tie by a coin. A symmetric P(A) = P(B) prediction
    is then no vote for A (argmax's first index) but half a vote for each side."""
    labels = np.asarray(labels, dtype=int)
    p = np.asarray(proba, dtype=np.float64)
    if not len(labels):
        return float("nan")
    top = p >= p.max(axis=1, keepdims=True) - TIE_TOLERANCE
    return float(np.mean(top[np.arange(len(labels)), labels] / top.sum(axis=1)))


def prior_proba(labels: np.ndarray, n: int) -> np.ndarray:
    freq = np.bincount(np.asarray(labels, dtype=int), minlength=3) / len(labels)
    return np.tile(freq, (n, 1))


def report(labels: np.ndarray, proba: np.ndarray) -> dict:
    """Log loss, accuracy (ties of the top probability split: `accuracy`) and per-class precision, recall
    and F1 of the argmax verdict."""
    labels = np.asarray(labels, dtype=int)
    pred = np.asarray(proba).argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, pred, labels=[0, 1, 2], zero_division=0)
    out = {"log_loss": round(log_loss(labels, proba), 6), "accuracy": round(accuracy(labels, proba), 6)}
    for j, name in enumerate(TARGETS):
        out[name] = {"precision": round(float(precision[j]), 6), "recall": round(float(recall[j]), 6),
                     "f1": round(float(f1[j]), 6), "support": int(support[j])}
    return out
