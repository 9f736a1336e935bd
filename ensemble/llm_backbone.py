"""The LLM's decoder backbone: 4-bit/8-bit loading, running it from a middle layer, and the cache of
what its frozen lower layers compute (shared by every fold of a run).

With LoRA on the top layers only, the layers below never change, so the hidden state entering the
first trained layer is computed once per battle for all folds and the fold's training and
inference run the top layers alone (the CPU demo's budget depends on it).
"""

from __future__ import annotations

import contextlib
import hashlib

import numpy as np
import torch

from .hf import ModelLoadError

#: Architectures whose decoder stack forward_from re-implements (Llama-3, SmolLM2, Mistral-style).
LAYERWISE_MODEL_TYPES = ("llama", "mistral")
#: Their linear layers: what "all-linear" means for them.
LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_quantization(quantization: str, device: torch.device) -> None:
    """Fail before loading gigabytes: bitsandbytes importable and able to quantize on `device`."""
    if quantization == "none":
        return
    fix = "or set llm.quantization: none in params.yaml"
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a broken install failing at import time
        raise ModelLoadError(f"params llm.quantization: {quantization!r} needs bitsandbytes, which cannot be "
                             f"imported ({type(exc).__name__}: {exc}); run `pip install bitsandbytes`, {fix}") from None
    try:
        probe = torch.ones(64, 64, device=device)
        if quantization == "4bit":
            bnb.functional.quantize_4bit(probe, quant_type="nf4")
        else:
            bnb.functional.int8_vectorwise_quant(probe.half())
    except Exception as exc:
        raise ModelLoadError(f"params llm.quantization: bitsandbytes {getattr(bnb, '__version__', '?')} cannot "
                             f"run {quantization} on {device} ({type(exc).__name__}: {exc}); use a CUDA device, "
                             f"{fix}") from None


def cpu_has_bf16() -> bool:
    """AVX512-BF16/AMX: bf16 matmuls ~1.45x faster than fp32 here (4-bit SmolLM2, train and predict)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def no_cpu_repacking(model) -> None:
    """bitsandbytes (0.50) repacks 4-bit weights for an AVX512-BF16 CPU kernel on the first eval
    forward, one way: later training forwards then run that inference kernel with no input gradient
    (silently wrong LoRA gradients after a mid-training evaluation), state_dict() unpacks them and
    shifts the logits (~0.03), and without the optional `kernels` package it is 2x slower anyway."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@contextlib.contextmanager
def quiet_transformers():
    """Load reports expected for every fold (unused lm_head weights) are hidden."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def forward_from(base, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
    """The decoder stack from layer `start` on, then the final norm: (B, L, h) hidden states entering
    layer `start` -> (B, L, h) last hidden states, as `base(...)` computes them (Llama family)."""
    from transformers.masking_utils import create_causal_mask

    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              past_key_values=None, position_ids=positions)
    rotary = base.rotary_emb(hidden, position_ids=positions)
    for layer in base.layers[start:base.config.num_hidden_layers]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    return base.norm(hidden)


def sequence_key(ids: list[int], tags: list[int]) -> bytes:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes() + b"|" + np.asarray(tags, dtype=np.int8).tobytes()).digest()


class FrozenCache:
    """Per battle sequence: the hidden states entering the first trained layer (None when every layer
    trains) and the frozen model's pooled features (what the linear probe is fitted on). One
    backbone at a time: a new backbone key empties it."""

    _store: dict = {"key": None, "rows": {}}

    def __init__(self, backbone_key: str):
        if FrozenCache._store["key"] != backbone_key:
            FrozenCache._store = {"key": backbone_key, "rows": {}}
        self.rows: dict = FrozenCache._store["rows"]

    def missing(self, keys: list[bytes]) -> list[int]:
        seen, out = set(), []
        for j, k in enumerate(keys):
            if k not in self.rows and k not in seen:
                seen.add(k)
                out.append(j)
        return out

    def put(self, key: bytes, hidden, pooled: np.ndarray) -> None:
        self.rows[key] = (hidden, pooled)

    def hidden(self, keys: list[bytes]) -> list:
        return [self.rows[k][0] for k in keys]

    def pooled(self, keys: list[bytes]) -> np.ndarray:
        return np.stack([self.rows[k][1] for k in keys]) if keys else np.zeros((0, 0))

    @classmethod
    def clear(cls) -> None:
        cls._store = {"key": None, "rows": {}}
