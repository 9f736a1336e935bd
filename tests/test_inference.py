"""Sharded multi-device inference: token-balanced shards, input order restored, shards really
concurrent, and two CPU "devices" giving exactly the single-device predictions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import battle_frame, tiny_config

from ensemble.models.llm.model import LLMModel
from ensemble.nn.hf import token_budget_batches
from ensemble.nn.inference import Replicas, batch_cost, resolve_devices, run_sharded, shard_batches

CPU2 = [torch.device("cpu"), torch.device("cpu")]


def test_shards_cover_every_batch_once_and_balance_tokens():
    lengths = np.random.default_rng(0).integers(5, 500, size=300)
    batches = token_budget_batches(lengths, 2048, 16)
    shards = shard_batches(batches, lengths, 3)
    rows = np.sort(np.concatenate([b for shard in shards for b in shard]))
    np.testing.assert_array_equal(rows, np.arange(300))
    loads = [sum(batch_cost(b, lengths) for b in shard) for shard in shards]
    assert max(loads) - min(loads) <= max(batch_cost(b, lengths) for b in batches)


def test_run_sharded_restores_order_and_runs_shards_concurrently():
    lengths = np.arange(1, 41)
    batches = token_budget_batches(lengths, 64)
    both_running = threading.Barrier(2, timeout=10)   # broken unless the two shards overlap in time
    threads: set[str] = set()

    def predict_batch(model, device, idx):
        name = threading.current_thread().name
        if name not in threads:
            threads.add(name)
            both_running.wait()
        return np.stack([idx * model, -idx, np.ones(len(idx))], axis=1).astype(float)

    out = run_sharded(batches, lengths, CPU2, Replicas(lambda d: 2), predict_batch, 40, 3)
    np.testing.assert_array_equal(out[:, 0], 2 * np.arange(40))
    np.testing.assert_array_equal(out[:, 1], -np.arange(40))
    assert len(threads) == 2


def test_run_sharded_raises_a_shard_error():
    def predict_batch(model, device, idx):
        if 0 in idx:
            raise RuntimeError("out of memory on shard")
        return np.zeros((len(idx), 3))

    with pytest.raises(RuntimeError, match="out of memory"):
        run_sharded(token_budget_batches(np.ones(10), 4), np.ones(10), CPU2, Replicas(lambda d: None),
                    predict_batch, 10, 3)


def test_each_shard_thread_runs_inside_its_own_cuda_device(monkeypatch):
    """A thread starts on the current CUDA device (cuda:0): each shard must enter torch.cuda.device(its
    device), or cuda:1's kernels and allocations land on cuda:0. torch.cuda.device is recorded here (no GPU)."""
    import contextlib

    entered: dict[str, list] = {}
    current = threading.local()

    @contextlib.contextmanager
    def device(d):
        current.device = str(d)
        entered.setdefault(threading.current_thread().name, []).append(str(d))
        yield
        current.device = None

    monkeypatch.setattr(torch.cuda, "device", device)
    seen = []

    def predict_batch(model, d, idx):
        seen.append((str(d), getattr(current, "device", None)))
        return np.zeros((len(idx), 3))

    gpus = [torch.device("cuda:0"), torch.device("cuda:1")]
    run_sharded(token_budget_batches(np.ones(8), 2), np.ones(8), gpus, Replicas(lambda d: None), predict_batch, 8, 3)
    assert {d for d, _ in seen} == {"cuda:0", "cuda:1"} and all(d == inside for d, inside in seen)
    assert sorted(sum(entered.values(), [])) == ["cuda:0", "cuda:1"]


def test_replicas_are_built_once_per_distinct_device():
    built = []
    replicas = Replicas(lambda d: built.append(str(d)) or len(built))
    run_sharded([np.array([0]), np.array([1])], np.ones(2), CPU2, replicas,
                lambda m, d, idx: np.zeros((len(idx), 3)), 2, 3)
    assert built == ["cpu"]


def test_resolve_devices():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    with pytest.raises(ValueError, match="empty"):
        resolve_devices([])
    if torch.cuda.device_count() < 8:
        with pytest.raises(ValueError, match="cuda:7"):
            resolve_devices(["cpu", "cuda:7"])
        assert resolve_devices(["cuda:7"], cpu_fallback=True) == [torch.device("cpu")]


def test_two_cpu_shards_equal_single_device_row_for_row(tmp_path, tiny_llm, one_torch_thread):
    frame = battle_frame(40)
    model = LLMModel(tiny_config(tiny_llm, infer_max_tokens=128, infer_max_rows=4)).fit(frame, None)
    model.save(tmp_path / "fold")
    single = LLMModel.load(tmp_path / "fold", runtime={"devices": ["cpu"]}).predict_proba(frame)
    sharded = LLMModel.load(tmp_path / "fold", runtime={"devices": ["cpu", "cpu"]}).predict_proba(frame)
    np.testing.assert_array_equal(sharded, single)
    shuffled = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    again = LLMModel.load(tmp_path / "fold", runtime={"devices": ["cpu", "cpu"]}).predict_proba(shuffled)
    order = shuffled["id"].map({k: i for i, k in enumerate(frame["id"])}).to_numpy()
    np.testing.assert_allclose(again, single[order], atol=1e-6)   # input order, whatever the batching
