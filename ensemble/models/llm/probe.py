"""The LLM's linear probe: a multinomial logistic regression on the frozen model's pooled features,
its regularisation chosen by a prompt-grouped inner CV on the training rows; its weights become the
score head that LoRA fine-tuning starts from (LP-FT)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ensemble.core.calibration import logistic_coef3, proba3
from ensemble.core.metrics import log_loss


@dataclass
class LinearProbe:
    """A multinomial logistic regression expressed as one linear layer on the raw features:
    standardisation is folded into the weights, so `x @ weight.T + bias` gives its logits."""

    weight: np.ndarray  # (3, d)
    bias: np.ndarray  # (3,)
    C: float
    cv_log_loss: float


def fit_linear_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, Cs, seed: int = 0,
                     n_splits: int = 3, labelled: np.ndarray | None = None) -> LinearProbe:
    """Standardise, then L2 logistic regression with C chosen by prompt-grouped inner CV (log loss).
    `y`: (n,) labels, or (n, 3) soft targets (distillation), fitted as three weighted copies of each row
    (ensemble.core.targets.weighted_copies) and scored by their cross-entropy. `labelled`: the rows
    with a real label (None: all); only they are held out and scored, pseudo-labelled rows train the
    inner fits but never choose C (ensemble.core.folds.labelled_splits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    from ensemble.core.folds import labelled_splits
    from ensemble.core.targets import weighted_copies

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    soft = y.ndim == 2
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    n = len(z)

    def fit(c, rows):
        if not soft:
            return LogisticRegression(C=c, max_iter=1000).fit(z[rows], y[rows].astype(np.int64))
        copy, labels, weights = weighted_copies(y[rows])
        return LogisticRegression(C=c, max_iter=1000).fit(z[rows][copy], labels, sample_weight=weights)

    Cs = [float(c) for c in Cs]
    labelled = np.ones(n, dtype=bool) if labelled is None else np.asarray(labelled, dtype=bool)
    n_groups = len(np.unique(groups[labelled]))
    best_c, best = Cs[0], np.inf
    if len(Cs) > 1 and n_groups >= n_splits:
        folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = labelled_splits(groups, labelled,
                                 lambda g: folds.split(np.zeros(len(g)), groups=g))
        for c in Cs:
            proba = np.zeros((n, 3))
            for tr, va in splits:
                proba[va] = proba3(fit(c, tr), z[va])
            yl, pl = y[labelled], proba[labelled]
            score = soft_log_loss(yl, pl) if soft else log_loss(yl, pl)
            if score < best:
                best_c, best = c, score
    clf = fit(best_c, np.arange(n))
    coef, intercept = logistic_coef3(clf)  # two classes (no ties) too: one row of logits, not a constant head
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return LinearProbe(weight=weight, bias=bias, C=best_c, cv_log_loss=float(best))


def soft_log_loss(targets: np.ndarray, proba: np.ndarray) -> float:
    """Mean cross-entropy of probabilities against soft targets (n, 3)."""
    return float(-(targets * np.log(np.clip(proba, 1e-15, 1.0))).sum(axis=1).mean())
