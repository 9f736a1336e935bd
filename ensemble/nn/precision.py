"""Which floating-point type a CUDA device computes in, for training (Accelerate's mixed precision),
autocast and the 4-bit matmuls: one rule for all three.

bf16 only where the GPU has it natively (compute capability 8.0 and newer: A100, L4, H100). torch's
`is_bf16_supported()` also says True on a T4 or V100 (7.x), where bf16 is emulated, so it is not asked.
"""

from __future__ import annotations

import torch

from ensemble.core.config import ConfigError

#: The first compute capability with bf16 tensor cores (Ampere).
NATIVE_BF16 = (8, 0)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a CUDA GPU with native bf16 (compute capability >= 8.0)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= NATIVE_BF16


def cuda_dtype(value: str, device: torch.device, key: str) -> torch.dtype:
    """The dtype params `key`: `value` (auto | fp32 | fp16 | bf16) means on the CUDA `device`: auto is
    bf16 where the GPU has it natively, else fp16 (trained with a GradScaler); explicit bf16 on an
    older GPU is refused (emulated, it runs far slower than fp16 and is no native format there)."""
    if value == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if value == "bf16" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(f"params {key}: 'bf16' but {device} has compute capability {major}.{minor}, without "
                          f"native bf16 (needs {NATIVE_BF16[0]}.{NATIVE_BF16[1]} or newer); use auto (fp16 with a "
                          f"GradScaler there), fp16 or fp32")
    return DTYPES[value]

