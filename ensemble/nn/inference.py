"""Multi-device inference for any torch model: one replica per device, batches balanced by tokens
across the devices, shards run concurrently in threads (torch releases the GIL inside kernels),
results put back in input order. Under DDP each process takes its share of the batches (rank_share)
on its own device and every process receives all rows (gather_rows).

Batches are planned once, before sharding, so a row is computed in the same batch whichever device
or process runs it: sharded output equals single-device output row for row.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ensemble.core import progress
from ensemble.nn.training import resolve_device


def resolve_devices(names: Sequence[str] | str, cpu_fallback: bool = False) -> list[torch.device]:
    """params `devices` -> torch devices; a missing GPU is an error unless the fallback is allowed."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("devices is empty; give at least one device, e.g. [cpu] or [cuda:0, cuda:1]")
    return [resolve_device(str(n), cpu_fallback) for n in names]


def batch_cost(batch: np.ndarray, lengths: np.ndarray) -> int:
    """Padded tokens of a batch: what the device actually computes."""
    return int(len(batch) * lengths[batch].max()) if len(batch) else 0


def shard_batches(batches: Sequence[np.ndarray], lengths, n_shards: int) -> list[list[np.ndarray]]:
    """Greedy longest-first: each batch goes to the shard with the fewest padded tokens so far."""
    lengths = np.asarray(lengths)
    shards: list[list[np.ndarray]] = [[] for _ in range(n_shards)]
    load = np.zeros(n_shards, dtype=np.int64)
    for b in sorted(batches, key=lambda b: -batch_cost(b, lengths)):
        k = int(np.argmin(load))
        shards[k].append(b)
        load[k] += batch_cost(b, lengths)
    return shards


def rank_share(batches: Sequence[np.ndarray], lengths) -> list[np.ndarray]:
    """This process's batches under DDP (shard_batches over the processes: the same plan on every one),
    all of them in one process."""
    from ensemble.nn import distributed as dist

    if not dist.is_distributed():
        return list(batches)
    return shard_batches(batches, lengths, dist.world_size())[dist.rank()]


def gather_rows(out: np.ndarray, mine: Sequence[np.ndarray]) -> np.ndarray:
    """Every process's rows of `out` (those of its batches `mine`) put together on every process (`out` itself
    in one process), checked: every row predicted."""
    from ensemble.nn import distributed as dist

    full = out
    if dist.is_distributed():
        rows = np.concatenate(list(mine)) if len(mine) else np.zeros(0, dtype=np.int64)
        full = np.full_like(out, np.nan)
        for part_rows, part in dist.all_gather((rows, out[rows])):
            full[part_rows] = part
    if np.isnan(full).any():
        raise RuntimeError("inference left rows without predictions")
    return full


class Replicas:
    """One model per distinct device, built on first use and kept, so valid and test predictions
    of a fold do not reload it. Equal devices (e.g. [cpu, cpu]) share one replica."""

    def __init__(self, build: Callable[[torch.device], Any]):
        self.build = build
        self.models: dict[str, Any] = {}

    def put(self, device: torch.device, model: Any) -> None:
        self.models[str(device)] = model

    def get(self, device: torch.device) -> Any:
        key = str(device)
        if key not in self.models:
            self.models[key] = self.build(device)
        return self.models[key]

    def clear(self) -> None:
        self.models.clear()


def run_sharded(
    batches: Sequence[np.ndarray],
    lengths,
    devices: Sequence[torch.device],
    replicas: Replicas,
    predict_batch: Callable[[Any, torch.device, np.ndarray], np.ndarray],
    n_rows: int,
    width: int,
    desc: str | None = None,
) -> np.ndarray:
    """predict_batch(model, device, row_indices) -> (len(rows), width) for every planned batch,
    spread over `devices`; returns (n_rows, width) in row order."""
    out = np.full((n_rows, width), np.nan, dtype=np.float64)
    shards = shard_batches(batches, lengths, len(devices))
    for device in devices:  # sequentially: two threads must not build the same replica
        replicas.get(device)
    bar = progress.bar(sum(len(b) for b in batches), desc, leave=False)
    timer = progress.Timer()
    lock = threading.Lock()

    def work(k: int) -> None:
        device = devices[k]
        model = replicas.get(device)
        # a thread starts on the current CUDA device (cuda:0): kernels and allocations go to its own
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            for batch in shards[k]:
                proba = predict_batch(model, device, batch)
                out[batch] = proba  # disjoint rows per batch: no lock needed for the write
                with lock:
                    bar.update(len(batch))

    try:
        if len(devices) == 1:
            work(0)
        else:
            with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="shard") as pool:
                for future in [pool.submit(work, k) for k in range(len(devices))]:
                    future.result()  # re-raises a shard's exception here
    finally:
        bar.close()
    if desc:
        rows = sum(len(b) for b in batches)
        progress.log_quiet(f"{desc}: {rows} rows on {', '.join(map(str, devices))} in {timer.seconds:.1f} s")
    covered = np.zeros(n_rows, dtype=bool)
    for b in batches:
        covered[b] = True
    if np.isnan(out[covered]).any():  # rows of no batch stay NaN (under DDP: other processes' rows)
        raise RuntimeError("sharded inference left rows without predictions")
    return out
