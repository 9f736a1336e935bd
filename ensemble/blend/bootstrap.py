"""Paired bootstrap over prompts: is a log-loss difference between two predictors real?

Rows that share a prompt are not independent (the arena repeats prompts, PandaLM holds 170 prompts
for 999 battles), so whole prompts are resampled, as the folds group them. Both predictors are
scored on the same resampled rows (paired), which cancels most of the row-to-row noise.
"""

from __future__ import annotations

import numpy as np


def paired_diff_ci(loss_a: np.ndarray, loss_b: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval of mean(loss_a) - mean(loss_b) over `n_boot` resamples of the
    groups with replacement (each resample draws as many groups as there are)."""
    g = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_groups = int(g.max()) + 1
    diff_sum = np.bincount(g, weights=np.asarray(loss_a, float) - np.asarray(loss_b, float), minlength=n_groups)
    rows = np.bincount(g, minlength=n_groups).astype(float)
    rng = np.random.default_rng(seed)
    stats, chunk = [], max(1, 2_000_000 // n_groups)  # bounded memory at Kaggle scale
    for start in range(0, n_boot, chunk):
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(chunk, n_boot - start))
        stats.append(counts @ diff_sum / (counts @ rows))
    lo, hi = np.quantile(np.concatenate(stats), [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 6), round(float(hi), 6)]
