"""The dual tower's ranking mode: an ordinal tie band on a score difference, fitted by log loss."""

from __future__ import annotations

import numpy as np

from ensemble.core.metrics import log_loss


def band_proba(d: np.ndarray, t: float, s: float) -> np.ndarray:
    """Ordinal-logistic tie band on a score difference: P(A)=σ((d-t)/s), P(B)=σ((-d-t)/s), tie the
    rest (non-negative because t >= 0). Exactly symmetric: d -> -d swaps A and B."""
    from scipy.special import expit

    d = np.asarray(d, dtype=np.float64)
    pa, pb = expit((d - t) / s), expit((-d - t) / s)
    return np.stack([pa, pb, np.clip(1.0 - (pa + pb), 0.0, 1.0)], axis=1)  # pa+pb: swap-exact


def fit_band(d: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(t, s) minimizing log loss of band_proba; t >= 0 and s > 0 through exp/softplus parametrization."""
    from scipy.optimize import minimize

    def loss(x):
        t, s = float(np.logaddexp(0.0, x[0])), float(np.exp(x[1]))
        return log_loss(labels, band_proba(d, t, s))

    spread = float(np.std(d)) or 1.0
    res = minimize(loss, x0=np.array([np.log(np.expm1(0.5 * spread)), np.log(spread)]), method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 2000})
    return float(np.logaddexp(0.0, res.x[0])), float(np.exp(res.x[1]))
