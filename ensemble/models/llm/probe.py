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
                     n_splits: int = 3) -> LinearProbe:
    """Standardise, then L2 logistic regression with C chosen by prompt-grouped inner CV (log loss)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    Cs = [float(c) for c in Cs]
    n_groups = len(np.unique(groups))
    best_c, best = Cs[0], np.inf
    if len(Cs) > 1 and n_groups >= n_splits:
        splits = list(GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(z, y, groups))
        for c in Cs:
            proba = np.zeros((len(y), 3))
            for tr, va in splits:
                clf = LogisticRegression(C=c, max_iter=1000).fit(z[tr], y[tr])
                proba[va] = proba3(clf, z[va])
            score = log_loss(y, proba)
            if score < best:
                best_c, best = c, score
    clf = LogisticRegression(C=best_c, max_iter=1000).fit(z, y)
    coef, intercept = logistic_coef3(clf)  # two classes (no ties) too: one row of logits, not a constant head
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return LinearProbe(weight=weight, bias=bias, C=best_c, cv_log_loss=float(best))

