"""The dual tower's encoding of towers into pooled vectors.

A fine-tuned encoder changes every fold, so its towers are encoded per frame, batched (`pair_pooled`).
A frozen encoder (the CPU demo) is the same in every fold, so each distinct tower is encoded once per
run and kept in the run's cache (`frozen_pooled`): training, the held-out rows, the OOF and test rows,
the position check's swapped battles and submit all read the same vectors.

A frozen tower is encoded alone, one call per tower with no padding, so its vector is a function of
the tower's ids (and the process's intra-op thread count, which the CPU kernels split work by): the
same bits whichever frame, fold or order asks for it, and a swapped battle meets its own two vectors
(exact swap symmetry). On 2 CPU cores one tower a call costs about 1.25x a batched pass per tower;
encoding each tower once instead of once per frame repays it several times over. On a GPU one call per
tower is bound by kernel launches: GPU runs fine-tune (freeze_layers >= 0), which batches.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble.core.cache import RunCache
from ensemble.core.fingerprint import tensor_digest
from ensemble.nn.batching import pad
from ensemble.nn.hf import token_budget_batches
from ensemble.nn.training import mixed_precision

#: the run's store of a frozen encoder's vector per distinct tower, keyed by the encoder's weights
POOLED = "dual_tower.pooled"


def tower_key(ids) -> bytes:
    return np.asarray(ids, dtype=np.int32).tobytes()


class TowerPooler:
    """Token-id towers -> pooled encoder vectors for one DualTowerNet, cached when it is frozen."""

    def __init__(self, net, tokenizer, cfg, frozen: bool, cache: RunCache):
        self.net = net
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.frozen = frozen
        self.cache = cache
        self._fp: str | None = None  # fingerprint of the (frozen) encoder weights

    def autocast(self, device: torch.device):
        amp = mixed_precision(self.cfg.train.precision, device, "dual_tower.train.precision")
        if amp == "no":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def pooled(self, enc: dict, pad_to_max_len: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vectors (CPU float32) of tower A and B for every row of an encoded frame, in row order."""
        pad_to = self.cfg.pad_to_max_len if pad_to_max_len is None else pad_to_max_len
        if self.frozen and not pad_to:
            return self.frozen_pooled(enc)
        return self.pair_pooled(enc, pad_to)

    @torch.inference_mode()
    def pool_towers(self, towers: list[list[int]], order: list[int], pad_to_max_len: bool = False) -> torch.Tensor:
        """Pooled vectors (CPU float32) of towers[order[k]] at row k, encoded in that order in
        token-budget batches padded to the batch's longest tower (or to max_len when asked)."""
        cfg = self.cfg
        net = self.net.eval()
        device = next(net.parameters()).device
        if pad_to_max_len:
            lengths = np.full(len(order), cfg.max_len)
        else:
            lengths = np.array([len(towers[i]) for i in order])
        out = torch.zeros(len(order), net.encoder.config.hidden_size)
        # `order` is already longest-first (or all equal), so the stable sort inside keeps it
        for batch in token_budget_batches(lengths, cfg.infer_max_tokens, cfg.infer_max_rows):
            rows = [towers[order[j]] for j in batch]
            ids, mask = pad(rows, self.tokenizer.pad_token_id, cfg.max_len if pad_to_max_len else None)
            with self.autocast(device):
                vectors = net.pool(ids.to(device), mask.to(device))
            out[torch.as_tensor(batch, dtype=torch.long)] = vectors.float().cpu()
        return out

    def pair_pooled(self, enc: dict, pad_to_max_len: bool = False,
                    dedupe: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vectors of tower A and B for every row, in row order, encoded in batches.

        Towers (not rows) are batched longest first, so each pads only to similar-length towers;
        ties are broken by the ids themselves, so the batches are a function of the set of towers
        only and a swapped battle meets bit-identical encoder input (exact swap symmetry). Identical
        towers (the arena repeats prompt+response pairs) are encoded once. pad_to_max_len (the
        benchmark baseline) pads every tower to max_len and keeps row order instead.
        """
        towers = enc["a"] + enc["b"]
        n = len(enc["a"])
        if pad_to_max_len:  # row by row, the row's two towers in canonical order
            order = [j for i in range(n) for j in ((i, i + n) if towers[i] <= towers[i + n] else (i + n, i))]
        elif not dedupe:
            order = sorted(range(2 * n), key=lambda i: (-len(towers[i]), towers[i]))
        else:
            distinct = sorted({tuple(t) for t in towers}, key=lambda t: (-len(t), t))
            where = {t: k for k, t in enumerate(distinct)}
            pooled = self.pool_towers(distinct, list(range(len(distinct))))
            v = pooled[torch.as_tensor([where[tuple(t)] for t in towers], dtype=torch.long)]
            return v[:n], v[n:]
        v = torch.empty(2 * n, self.net.encoder.config.hidden_size)
        v[torch.as_tensor(order, dtype=torch.long)] = self.pool_towers(towers, order, pad_to_max_len)
        return v[:n], v[n:]

    def fingerprint(self) -> str:
        """The frozen store's key: the encoder's weights and what turns a tower into a vector (pooling,
        the device and the precision autocast resolves to there)."""
        if self._fp is None:
            device = next(self.net.parameters()).device
            amp = mixed_precision(self.cfg.train.precision, device, "dual_tower.train.precision")
            head = f"{type(self.net.encoder).__name__}|{self.cfg.pooling}|{device.type}|{amp}"
            self._fp = tensor_digest(self.net.encoder.state_dict().items(), head)
        return self._fp

    @torch.inference_mode()
    def frozen_pooled(self, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen encoder: pooled vectors of both towers of every row, each distinct tower encoded
        once per run, alone (see the module docstring)."""
        store = self.cache.store(POOLED, self.fingerprint())
        towers = enc["a"] + enc["b"]
        keys = [tower_key(t) for t in towers]
        net = self.net.eval()
        device = next(net.parameters()).device
        for key, tower in zip(keys, towers):
            if key in store:
                continue
            if not tower:  # a tokenizer with no special tokens and an empty text: nothing to pool
                store[key] = torch.zeros(net.encoder.config.hidden_size)
                continue
            ids = torch.tensor([tower], dtype=torch.long, device=device)
            with self.autocast(device):
                vector = net.pool(ids, torch.ones_like(ids))
            # a copy: cls pooling returns a view that would keep the whole (1, length, hidden) output alive
            store[key] = vector[0].float().cpu().clone()
        vectors = torch.stack([store[k] for k in keys])
        n = len(enc["a"])
        return vectors[:n], vectors[n:]
