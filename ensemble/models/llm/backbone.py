"""The LLM's decoder backbone: 4-bit/8-bit loading, running it from a middle layer, and the cache of
what its frozen lower layers compute (shared by every fold of a run).

With LoRA on the top layers only, the layers below never change, so the hidden state entering the
first trained layer is computed once per battle for all folds and the fold's training and
inference run the top layers alone (the CPU demo's budget depends on it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ensemble.core import progress
from ensemble.core.config import ConfigError
from ensemble.nn.batching import collate_battles
from ensemble.nn.hf import (
    ModelLoadError,
    fit_embeddings,
    load_config,
    load_pretrained,
    resolve_pretrained,
    token_budget_batches,
)
from ensemble.nn.precision import DTYPES, cuda_dtype

# bitsandbytes warns, once per process, that the optional `kernels` package (a hub download) is
# missing for its AVX512-BF16 4-bit kernel; no_cpu_repacking turns that kernel path off, so the
# warning is noise a user cannot act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "kernels-community" not in record.getMessage())
# peft reads transformers' deprecated `is_gradient_checkpointing` for every model it wraps: a
# FutureWarning per fold about library internals.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

#: The convert_llm stage's output: the embedded SmolLM2 as a plain Hugging Face folder.
DEFAULT_BASE = "artifacts/pretrained/smollm2"

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
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes() + b"|"
                        + np.asarray(tags, dtype=np.int8).tobytes()).digest()


class FrozenCache:
    """Per battle sequence: the hidden states entering the first trained layer (None when every layer
    trains) and the frozen model's pooled features (what the linear probe is fitted on), in a store
    of the run's caches keyed by the backbone (ensemble.core.cache: another backbone, another store)."""

    def __init__(self, rows: dict):
        self.rows = rows

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


# ----------------------------------------------------------------------------- loading (cfg: LLMConfig)

def base_path(cfg) -> str:
    base = cfg.base_model
    if base == DEFAULT_BASE and not Path(base).is_dir():
        raise ModelLoadError(f"{base}: no such model folder; build it with `python stages/convert_llm.py {base}` "
                             f"(the convert_llm stage of `dvc repro`), or set llm.base_model to a "
                             f"local Hugging Face folder or `embedded:smollm2`")
    return resolve_pretrained(base)


def compute_dtype(cfg, device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return cuda_dtype(cfg.compute_dtype, device, "llm.compute_dtype")
    if cfg.compute_dtype != "auto":
        return DTYPES[cfg.compute_dtype]
    if cfg.quantization == "4bit" and cpu_has_bf16():
        return torch.bfloat16  # only the matmuls: norms, embeddings and residuals stay fp32 (kbit prep)
    return torch.float32  # unquantized weights in bf16 would put the residual stream in bf16 too


def layer_plan(cfg) -> tuple[int, int]:
    """(kept layers, first LoRA layer), checked against the base model's config."""
    config = load_config(base_path(cfg))
    available = int(getattr(config, "num_hidden_layers", 0) or 0)
    if cfg.num_layers and available and cfg.num_layers > available:
        raise ConfigError(f"params llm.num_layers: {cfg.num_layers} but {cfg.base_model} has only "
                          f"{available} layers")
    kept = cfg.num_layers or available
    if cfg.lora_layers > kept:
        raise ConfigError(f"params llm.lora_layers: {cfg.lora_layers} but only {kept} layers are kept")
    start = kept - cfg.lora_layers if cfg.lora_layers else 0
    if start and getattr(config, "model_type", None) not in LAYERWISE_MODEL_TYPES:
        raise ConfigError(f"params llm.lora_layers: {cfg.lora_layers} (frozen lower layers computed once) "
                          f"supports model types {', '.join(LAYERWISE_MODEL_TYPES)}, not "
                          f"{getattr(config, 'model_type', '?')!r}; set lora_layers: 0")
    return kept, start


def backbone_key(cfg, device: torch.device) -> str:
    """What the frozen layers' output depends on: the FrozenCache key."""
    return json.dumps([base_path(cfg), cfg.quantization, str(compute_dtype(cfg, device)), layer_plan(cfg), cfg.pooling])


def adapter_state(backbone, head, adapter: str = "default") -> dict:
    """CPU copies of what a fold trains: its LoRA weights (backbone.*, without the adapter's name) and the
    score head (score.*)."""
    from peft import get_peft_model_state_dict

    lora = get_peft_model_state_dict(backbone, adapter_name=adapter, save_embedding_layers=False)
    state = {f"backbone.{k}": v.detach().to("cpu", copy=True) for k, v in lora.items()}
    state.update({f"score.{k}": v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()})
    return state


def lora_config(cfg, kept: int, start: int):
    from peft import LoraConfig, TaskType

    targets = cfg.lora_target_modules
    if start and targets == "all-linear":  # peft takes layers_to_transform with a list of names only
        targets = list(LLAMA_LINEAR_MODULES)
    config = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout,
                        target_modules=targets if isinstance(targets, str) else list(targets),
                        layers_to_transform=list(range(start, kept)) if start else None,
                        layers_pattern="layers" if start else None)
    if not isinstance(config.target_modules, str):
        # peft keeps the names as a set, whose order follows string hashing and differs between processes:
        # sorted, a fold's adapter_config.json (and dvc.lock) is the same on every run
        config.target_modules = sorted(config.target_modules)
    return config


def load_base(cfg, tokenizer, device: torch.device):
    """The decoder (first `num_layers` layers), 4-bit NF4 / 8-bit / plain, prepared for k-bit training."""
    from transformers import AutoModel, BitsAndBytesConfig

    kept, _ = layer_plan(cfg)
    check_quantization(cfg.quantization, device)
    dtype = compute_dtype(cfg, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.num_layers:
        kwargs["num_hidden_layers"] = kept
    if cfg.quantization != "none":
        if cfg.quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": str(device)}
    with quiet_transformers():
        model = load_pretrained(AutoModel, base_path(cfg), "model", **kwargs)
    if cfg.quantization == "none":
        model.to(device)
    elif cfg.quantization == "4bit":
        no_cpu_repacking(model)
    # a pad token added by load_tokenizer: its row (deterministic, never attended nor pooled) is not saved
    fit_embeddings(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.quantization != "none":
        # fp32 norms/embeddings, frozen base; run for inference too so dtypes match training
        from peft import prepare_model_for_kbit_training

        # checkpointing is train_loop's, for every quantization (PairClassifier.activation_checkpointing_enable)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


class SharedBase:
    """The decoder of one device, loaded once per run (held by the run's cache, shared_base) and wrapped
    once by peft; each fold model adds its own named LoRA adapter to it and deletes it when the model is
    released. K folds, their predictions, a merged model and submit hold one copy of the base weights.

    Exact: peft builds an added adapter by the code that builds the first one (inject_adapter ->
    update_layer, module by module in the same order), so after the same seed a fold's LoRA starts
    where get_peft_model on a freshly loaded base starts it (load_base draws no random numbers); the
    base weights never change (adapters are never merged into them, and only the active adapter trains).
    """

    def __init__(self, base):
        self.base = base  # the bare decoder (load_base)
        self.peft = None  # the peft wrapper, made with the first adapter
        self.serial = 0

    def add(self, config) -> str:
        """A new adapter (initialised from the global RNG, as get_peft_model does), made the active one."""
        from peft import get_peft_model

        name = f"adapter_{self.serial}"
        self.serial += 1
        if self.peft is None:
            self.peft = get_peft_model(self.base, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
            self.peft.set_adapter(name)
        return name

    def remove(self, name: str) -> None:
        if self.peft is not None and name in self.peft.peft_config:
            with warnings.catch_warnings():  # "adapter ... was active which is now deleted": as meant
                warnings.simplefilter("ignore", UserWarning)
                self.peft.delete_adapter(name)

    def adapters(self) -> list[str]:
        return list(self.peft.peft_config) if self.peft is not None else []


def shared_base(cache, cfg, tokenizer, device: torch.device) -> SharedBase:
    """This run's decoder on `device` (load_base on first use), from the run's cache (ensemble.core.cache)."""
    key = json.dumps([base_path(cfg), cfg.quantization, cfg.compute_dtype, layer_plan(cfg)[0], len(tokenizer),
                      tokenizer.pad_token_id])
    store = cache.store("llm.base", key)
    if str(device) not in store:
        store[str(device)] = SharedBase(load_base(cfg, tokenizer, device))
    return store[str(device)]


# ----------------------------------------------------------------------------- the frozen pass

def frozen_pass(cfg, net, enc_ids: list, enc_tags: list, pad_id: int, device: torch.device, store: dict) -> FrozenCache:
    """Hidden states entering the first LoRA layer and the probe's pooled features of every battle
    not in `store` yet (adapters disabled: the base model alone)."""
    cache = FrozenCache(store)
    keys = [sequence_key(i, t) for i, t in zip(enc_ids, enc_tags)]
    todo = cache.missing(keys)
    if not todo:
        return cache
    lengths = np.array([len(enc_ids[j]) for j in todo])
    was_training = net.training
    net.eval()
    plan = token_budget_batches(lengths, cfg.infer_max_tokens, cfg.infer_max_rows)
    desc, timer = f"llm frozen layers ({len(todo)} new sequences)", progress.Timer()
    bar = progress.bar(len(plan), desc, leave=False)
    with torch.inference_mode(), net.backbone.disable_adapter():
        for batch in plan:
            bar.update(1)
            rows = [todo[b] for b in batch]
            x = collate_battles(rows, enc_ids, enc_tags, pad_id)
            mask = x["attention_mask"].to(device)
            out = net.base(input_ids=x["input_ids"].to(device), attention_mask=mask,
                           output_hidden_states=bool(net.start), use_cache=False)
            pooled = net.pool(out.last_hidden_state, mask, x["tags"].to(device)).cpu().numpy()
            for r, j in enumerate(rows):
                n = len(enc_ids[j])
                hidden = out.hidden_states[net.start][r, :n].to("cpu", copy=True) if net.start else None
                cache.put(keys[j], hidden, pooled[r])
    bar.close()
    progress.log_quiet(f"{desc}: {timer.seconds:.1f} s")
    net.train(was_training)
    return cache


def check_cache_memory(cfg, encoder, frames: list) -> None:
    """With lora_layers > 0 the run keeps the frozen layers' states (fp32) of every sequence it ever runs
    in RAM: each training battle (its swapped twin too with swap_augment or swap_tta: calibration and
    valid rows are training rows), each test battle (its twin with swap_tta). Counted here, by encoding
    every frame, before any fold trains, against llm.cache_max_gib (0: half of the machine's memory)."""
    encoder.check_budget()
    tokens = 0
    for i, frame in enumerate(frames):  # frames[0]: the training rows, the rest: test rows
        enc = encoder.encode_frame(frame, swapped=(cfg.swap_augment or cfg.swap_tta) if i == 0 else cfg.swap_tta)
        tokens += sum(map(len, enc.ids)) + sum(map(len, enc.swap_ids or []))
    hidden_size = int(getattr(load_config(base_path(cfg)), "hidden_size", 0) or 0)
    need = tokens * hidden_size * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget = cfg.cache_max_gib * 2**30 if cfg.cache_max_gib else 0.5 * total
    if need > budget:
        what = f"llm.cache_max_gib {cfg.cache_max_gib:g} GiB" if cfg.cache_max_gib else \
            f"half of this machine's {total / 2**30:.0f} GiB of RAM"
        raise ConfigError(f"params llm.lora_layers: {cfg.lora_layers} keeps the frozen layers' states of every "
                          f"sequence of the run in memory ({tokens:,} tokens x {hidden_size} x 4 bytes = "
                          f"{need / 2**30:.2f} GiB), more than {what}; set lora_layers: 0 (every layer trains, "
                          f"nothing cached), lower max_len, use fewer rows, or raise llm.cache_max_gib")
