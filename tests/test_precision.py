"""Precision by compute capability, on simulated GPUs (torch's CUDA queries patched): the dtype training,
autocast and the 4-bit matmuls use, the GradScaler, and the refusal of bf16 where it is only emulated."""

import pytest
import torch

from ensemble.core.cache import RunCache
from ensemble.core.config import ConfigError
from ensemble.models.dual_tower.cache import TowerPooler
from ensemble.models.dual_tower.model import DualTowerConfig, DualTowerTrain
from ensemble.models.llm.backbone import compute_dtype
from ensemble.models.llm.model import LLMConfig
from ensemble.nn.training import TrainConfig, make_accelerator, mixed_precision

CUDA = torch.device("cuda")
GPUS = {"T4": (7, 5), "V100": (7, 0), "A100": (8, 0), "H100": (9, 0)}


def simulate_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    """One CUDA device of `capability`; is_bf16_supported() says True as torch 2.13 does on 7.x (emulation)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


def training_precision(cfg: TrainConfig) -> tuple[str, bool, torch.dtype | None]:
    """(Accelerate's mixed precision, whether it built an enabled GradScaler, the training forward's autocast
    dtype or None) of train_loop's Accelerator for `cfg` on the simulated GPU."""
    accelerator = make_accelerator(cfg, CUDA)
    scaler = accelerator.scaler is not None and accelerator.scaler.is_enabled()
    with accelerator.autocast():
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    return accelerator.mixed_precision, scaler, dtype


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The simulated GPU's Accelerate state is not left to the next test."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("gpu, dtype", [("T4", torch.float16), ("V100", torch.float16),
                                        ("A100", torch.bfloat16), ("H100", torch.bfloat16)])
def test_auto_is_bf16_only_where_native_else_fp16_with_a_grad_scaler(monkeypatch, gpu, dtype):
    simulate_gpu(monkeypatch, GPUS[gpu])
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    assert training_precision(TrainConfig(precision="auto")) == (name, dtype == torch.float16, dtype)
    with TowerPooler(None, None, DualTowerConfig(), False, RunCache()).autocast(CUDA):  # dual tower inference
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == dtype
    assert compute_dtype(LLMConfig(quantization="4bit", compute_dtype="auto"), CUDA) == dtype


@pytest.mark.parametrize("gpu", ["T4", "H100"])
def test_explicit_fp16_and_fp32_are_kept(monkeypatch, gpu):
    simulate_gpu(monkeypatch, GPUS[gpu])
    assert training_precision(TrainConfig(precision="fp16")) == ("fp16", True, torch.float16)
    assert training_precision(TrainConfig(precision="fp32")) == ("no", False, None)
    assert compute_dtype(LLMConfig(compute_dtype="fp16"), CUDA) == torch.float16
    assert compute_dtype(LLMConfig(compute_dtype="fp32"), CUDA) == torch.float32


def test_explicit_bf16_is_refused_below_capability_8_and_kept_from_8(monkeypatch):
    simulate_gpu(monkeypatch, GPUS["T4"])
    with pytest.raises(ConfigError, match=r"params llm\.train\.precision: 'bf16' but cuda has compute capability "
                                          r"7\.5, without native bf16 \(needs 8\.0 or newer\); use auto"):
        mixed_precision("bf16", CUDA, "llm.train.precision")
    with pytest.raises(ConfigError, match=r"params llm\.compute_dtype: 'bf16' .* 7\.5"):
        compute_dtype(LLMConfig(compute_dtype="bf16"), CUDA)
    with pytest.raises(ConfigError, match=r"params dual_tower\.train\.precision: 'bf16' .* 7\.5"):
        bf16 = DualTowerConfig(train=DualTowerTrain(precision="bf16"))
        TowerPooler(None, None, bf16, False, RunCache()).autocast(CUDA)
    simulate_gpu(monkeypatch, GPUS["A100"])
    assert training_precision(TrainConfig(precision="bf16")) == ("bf16", False, torch.bfloat16)
    assert compute_dtype(LLMConfig(compute_dtype="bf16"), CUDA) == torch.bfloat16


def test_bf16_on_a_t4_is_refused_before_any_fold_trains(monkeypatch, tiny_llm, tiny_backbone):
    from ensemble.models.dual_tower.model import DualTowerModel
    from ensemble.models.llm.model import LLMModel

    simulate_gpu(monkeypatch, GPUS["T4"])
    llm = LLMModel({"base_model": tiny_llm, "quantization": "none", "num_layers": 0, "lora_layers": 0,
                    "devices": ["cuda:0"], "train": {"precision": "bf16"}})
    with pytest.raises(ConfigError, match=r"llm\.train\.precision: 'bf16'.*7\.5"):
        llm.check_resources([])
    tower = DualTowerModel({"backbone": tiny_backbone, "device": "cuda:0", "train": {"precision": "bf16"}})
    with pytest.raises(ConfigError, match=r"dual_tower\.train\.precision: 'bf16'.*7\.5"):
        tower.check_resources([])


def test_cpu_precision_is_unchanged():
    cpu = torch.device("cpu")
    assert mixed_precision("auto", cpu) == "no" and mixed_precision("fp32", cpu) == "no"
    assert compute_dtype(LLMConfig(quantization="none"), cpu) == torch.float32
    with pytest.raises(ConfigError, match="CUDA"):
        mixed_precision("fp16", cpu)
