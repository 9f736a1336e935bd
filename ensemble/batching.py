"""Padding and length-grouped batches shared by the transformer models (one definition of padding)."""

from __future__ import annotations

import math

import numpy as np
import torch


def pad(rows: list, pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to `length` (default: the longest): (ids, attention mask), both (n, length)."""
    length = length or max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


class LengthGroupedBatches:
    """Length-grouped random batches of (row, swapped) items: near-uniform lengths per batch cut CPU
    padding waste in training too; a new deterministic shuffle each time it is iterated (epoch)."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group: int = 50):
        self.lengths, self.batch_size, self.seed, self.group, self.epoch = lengths, batch_size, seed, group, 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        chunk = self.batch_size * self.group
        batches = []
        for s in range(0, len(order), chunk):
            part = order[s:s + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches.extend(part[i:i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size))
        for i in rng.permutation(len(batches)):
            yield batches[i]
