"""Paired bootstrap over prompts: is a log-loss difference between two predictors real?

Rows that share a prompt are not independent (the arena repeats prompts, PandaLM holds 170 prompts
for 999 battles), so whole prompts are resampled, as the folds group them. Both predictors are
scored on the same resampled rows (paired), which cancels most of the row-to-row noise.
"""

from __future__ import annotations

import numpy as np


class PairedBootstrap:
    """Paired intervals for any number of predictor pairs over the same groups: the resampled group
    counts are drawn once (n_boot multinomial draws over the groups) and kept, compactly, for every
    pair: the blend stage's intervals share one set of resamples instead of drawing it each time."""

    def __init__(self, groups: np.ndarray, n_boot: int = 1000, seed: int = 0):
        self.g = np.unique(np.asarray(groups), return_inverse=True)[1]
        self.n_groups = int(self.g.max()) + 1
        self.rows = np.bincount(self.g, minlength=self.n_groups).astype(float)
        rng = np.random.default_rng(seed)
        chunk = max(1, 2_000_000 // self.n_groups)  # bounded memory at Kaggle scale
        self.draws = []
        for start in range(0, n_boot, chunk):
            size = min(chunk, n_boot - start)
            share = np.full(self.n_groups, 1.0 / self.n_groups)
            counts = rng.multinomial(self.n_groups, share, size=size)
            self.draws.append(counts.astype(np.min_scalar_type(counts.max())))  # small: a byte each

    def ci(self, loss_a: np.ndarray, loss_b: np.ndarray, level: float = 0.95) -> list[float]:
        """[lo, hi] percentile interval of mean(loss_a) - mean(loss_b) over the resamples."""
        diff = np.asarray(loss_a, float) - np.asarray(loss_b, float)
        diff_sum = np.bincount(self.g, weights=diff, minlength=self.n_groups)
        stats = []
        for draw in self.draws:
            counts = draw.astype(np.int64)
            stats.append(counts @ diff_sum / (counts @ self.rows))
        lo, hi = np.quantile(np.concatenate(stats), [(1 - level) / 2, (1 + level) / 2])
        return [round(float(lo), 6), round(float(hi), 6)]


def paired_diff_ci(loss_a: np.ndarray, loss_b: np.ndarray, groups: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval of mean(loss_a) - mean(loss_b) over `n_boot` resamples of the
    groups with replacement (each resample draws as many groups as there are)."""
    return PairedBootstrap(groups, n_boot, seed).ci(loss_a, loss_b, level)
