"""The dual tower's encoding of towers into pooled vectors, cached in the run's caches (the RunCache
its OOF run or submission hands it): with a frozen encoder each distinct tower is encoded once for
every fold of a run."""

from __future__ import annotations

import numpy as np
import torch

from ensemble.core.cache import RunCache
from ensemble.core.fingerprint import tensor_digest
from ensemble.nn.batching import pad
from ensemble.nn.hf import token_budget_batches
from ensemble.nn.training import mixed_precision

#: The run's stores: "dual_tower.pooled" holds a frozen encoder's vector per distinct tower (keyed by the
#: encoder's weights), shared by every fold (the demo's CPU budget depends on it); "dual_tower.frames"
#: the predict path's (pa, pb) per (encoder, frame), a deterministic function of both, so a hit is
#: bit-identical to recomputing: the valid frame scored during fit and the test frame scored by every
#: fold are encoded once. At most FRAME_CACHE_SIZE frames are kept, the least recently used evicted: a
#: fold scores five (held-out, OOF, test and the position check's two), so the test frame stays.
POOLED, FRAMES = "dual_tower.pooled", "dual_tower.frames"
FRAME_CACHE_SIZE = 6


def tower_key(ids) -> bytes:
    return np.asarray(ids, dtype=np.int32).tobytes()


def ids_key(enc: dict) -> str:
    import hashlib

    h = hashlib.sha1()
    for side in ("a", "b"):
        for ids in enc[side]:
            h.update(tower_key(ids))
            h.update(b"|")
    return h.hexdigest()


class TowerPooler:
    """Token-id towers -> pooled encoder vectors for one DualTowerNet, cached when it is frozen."""

    def __init__(self, net, tokenizer, cfg, frozen: bool, cache: RunCache):
        self.net, self.tokenizer, self.cfg, self.frozen, self.cache = net, tokenizer, cfg, frozen, cache
        self._fp: str | None = None  # fingerprint of the (frozen) encoder weights

    def autocast(self, device: torch.device):
        amp = mixed_precision(self.cfg.train.precision, device, "dual_tower.train.precision")
        if amp == "no":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    @torch.inference_mode()
    def pool_towers(self, towers: list[list[int]], order: list[int], pad_to_max_len: bool = False) -> torch.Tensor:
        """Pooled vectors (CPU float32) of towers[order[k]] at row k, encoded in that order in
        token-budget batches padded to the batch's longest tower (or to max_len when asked)."""
        cfg, net = self.cfg, self.net
        net.eval()
        device = next(net.parameters()).device
        lengths = np.full(len(order), cfg.max_len) if pad_to_max_len else np.array([len(towers[i]) for i in order])
        out = torch.zeros(len(order), net.encoder.config.hidden_size)
        # `order` is already longest-first (or all equal), so the stable sort inside keeps it
        for batch in token_budget_batches(lengths, cfg.infer_max_tokens, cfg.infer_max_rows):
            ids, mask = pad([towers[order[j]] for j in batch], self.tokenizer.pad_token_id,
                            cfg.max_len if pad_to_max_len else None)
            with self.autocast(device):
                out[torch.as_tensor(batch, dtype=torch.long)] = net.pool(ids.to(device), mask.to(device)).float().cpu()
        return out

    def pair_pooled(self, enc: dict, pad_to_max_len: bool | None = None,
                    dedupe: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vectors of tower A and B for every row, in row order.

        Towers (not rows) are batched longest first, so each pads only to similar-length towers;
        ties are broken by the ids themselves, so the batches are a function of the set of towers
        only and a swapped battle meets bit-identical encoder input (exact swap symmetry). Identical
        towers (the arena repeats prompt+response pairs) are encoded once. pad_to_max_len (the
        benchmark baseline) pads every tower to max_len and keeps row order instead.
        """
        pad_to_max_len = self.cfg.pad_to_max_len if pad_to_max_len is None else pad_to_max_len
        towers, n = enc["a"] + enc["b"], len(enc["a"])
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
        if self._fp is None:
            head = (f"{type(self.net.encoder).__name__}|{self.cfg.pooling}|{self.cfg.infer_max_tokens}|"
                    f"{self.cfg.infer_max_rows}|{self.cfg.train.precision}")
            self._fp = tensor_digest(self.net.encoder.state_dict().items(), head)
        return self._fp

    def frame_pooled(self, enc: dict, pad_to_max_len: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """pair_pooled, memoized across folds when the encoder is frozen (bit-identical either way)."""
        pad_to = self.cfg.pad_to_max_len if pad_to_max_len is None else pad_to_max_len
        if not self.frozen:
            return self.pair_pooled(enc, pad_to)
        key = (self.fingerprint(), str(next(self.net.parameters()).device), ids_key(enc), pad_to)
        frames = self.cache.store(FRAMES)
        if key in frames:
            frames.move_to_end(key)  # least recently used goes first
            return frames[key]
        while len(frames) >= FRAME_CACHE_SIZE:
            frames.popitem(last=False)
        frames[key] = self.pair_pooled(enc, pad_to)
        return frames[key]

    def remember(self, enc: dict, pooled: tuple) -> None:
        """Put vectors computed by the predict path into the tower store (they are the same towers)."""
        store = self.cache.store(POOLED, self.fingerprint())
        for side, vectors in zip(("a", "b"), pooled):
            for ids, vec in zip(enc[side], np.asarray(vectors)):
                store.setdefault(tower_key(ids), vec)

    @torch.inference_mode()
    def cached_pooled(self, enc: dict) -> tuple[np.ndarray, np.ndarray]:
        """Frozen encoder only: pooled vectors of both towers, each distinct tower encoded once per
        process (not bit-stable across batchings, so used for training and evaluation only)."""
        cache = self.cache.store(POOLED, self.fingerprint())
        towers = enc["a"] + enc["b"]
        keys = [tower_key(t) for t in towers]
        todo = list({k: i for i, k in enumerate(keys) if k not in cache}.values())
        if todo:
            todo.sort(key=lambda i: -len(towers[i]))
            for i, vec in zip(todo, self.pool_towers(towers, todo).numpy()):
                cache[keys[i]] = vec
        n = len(enc["a"])
        vectors = np.stack([cache[k] for k in keys])
        return vectors[:n], vectors[n:]
