"""Padding and length-grouped batches shared by the transformer models (one definition of padding)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ensemble.core.targets import swap_targets


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
    padding waste in training too; a new deterministic shuffle each time it is iterated (epoch).

    `paired` (swap_augment: paired, LMSYS 2024 2nd place): items i and i + n/2 are a battle and its
    swap, and every batch holds both, so one optimizer step sees each battle from both sides: batches
    of batch_size/2 battles (rounded up), each followed by the same battles' swaps."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group: int = 50, paired: bool = False):
        self.paired, half = paired, len(lengths) // 2
        self.lengths = np.asarray(lengths)[:half] if paired else np.asarray(lengths)
        self.batch_size = max(1, math.ceil(batch_size / 2)) if paired else batch_size
        self.seed, self.group, self.epoch = seed, group, 0

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
        n = len(self.lengths)
        for i in rng.permutation(len(batches)):
            yield batches[i] + [j + n for j in batches[i]] if self.paired else batches[i]


def shuffled_loader(items: np.ndarray, batch_size: int, seed: int, paired: bool, collate_fn):
    """A DataLoader of random batches of `items` (the LLM's training rows); `paired`: the second half of
    `items` holds the first half's swapped twins, and each batch holds a battle with its twin."""
    if paired:
        batches = LengthGroupedBatches(np.zeros(len(items)), batch_size, seed, group=1, paired=True)
        return torch.utils.data.DataLoader(items.tolist(), batch_sampler=batches, collate_fn=collate_fn)
    return torch.utils.data.DataLoader(items.tolist(), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn)


def collate_battles(idx, ids: list, tags: list, pad_id: int, hidden: list | None = None, labels=None,
                    pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """The LLM's batches. Right padding (the head pools the last real token): ids or cached hidden
    states, mask, part tags (-1 on padding), labels."""
    idx = list(idx)
    input_ids, mask = pad([ids[i] for i in idx], pad_id, pad_to)
    batch = {"attention_mask": mask, "tags": pad([tags[i] for i in idx], -1, pad_to)[0]}
    if hidden is None:
        batch["input_ids"] = input_ids
    else:  # (B, L, h) states entering the first trained layer, zero past each row's end
        states = torch.zeros((len(idx), mask.shape[1], hidden[idx[0]].shape[-1]), dtype=hidden[idx[0]].dtype)
        for r, i in enumerate(idx):
            states[r, :len(ids[i])] = hidden[i]
        batch["hidden"] = states
    if labels is not None:
        batch["labels"] = target_tensor(np.asarray(labels)[idx])
    return batch


def target_tensor(targets: np.ndarray) -> torch.Tensor:
    """Hard labels as class indices, soft targets (n, 3) as float probabilities: torch's cross_entropy
    takes either."""
    if targets.ndim == 2:
        return torch.as_tensor(targets, dtype=torch.float32)
    return torch.as_tensor(targets, dtype=torch.long)


def collate_towers(items: list[int], enc: dict, labels: np.ndarray, pad_id: int,
                   pooled: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """The dual tower's batches. Items 0..n-1 are the battles, n..2n-1 the same battles swapped
    (labels [1,0,2], or soft targets (n, 3) with A and B exchanged); rows 0..B-1 of the result are
    towers A, B..2B-1 towers B. With `pooled` (a frozen encoder) batches carry cached vectors instead
    of token ids."""
    n = len(enc["a"])
    rows = np.array([i % n for i in items])
    swapped = np.array([i >= n for i in items])
    t = labels[rows]
    batch = {"labels": target_tensor(np.where(swapped[:, None] if t.ndim == 2 else swapped, swap_targets(t), t))}
    if pooled is not None:
        pa = np.where(swapped[:, None], pooled[1][rows], pooled[0][rows])
        pb = np.where(swapped[:, None], pooled[0][rows], pooled[1][rows])
        batch["pooled"] = torch.from_numpy(np.concatenate([pa, pb]))
    else:
        a = [enc["b"][r] if s else enc["a"][r] for r, s in zip(rows, swapped)]
        b = [enc["a"][r] if s else enc["b"][r] for r, s in zip(rows, swapped)]
        batch["input_ids"], batch["attention_mask"] = pad(a + b, pad_id)
    if enc["features"] is not None:
        f = enc["features"]
        fa = np.where(swapped[:, None], f[rows, 1], f[rows, 0])
        fb = np.where(swapped[:, None], f[rows, 0], f[rows, 1])
        batch["features"] = torch.from_numpy(np.concatenate([fa, fb]))
    return batch
