"""One training loop for both transformer base models (dual tower and LLM), in the style of the
Hugging Face example scripts: Accelerate owns devices, mixed precision, gradient accumulation and
DDP (`accelerate launch`), this module owns the schedule, evaluation, best checkpoint and early stop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ensemble.core import progress
from ensemble.core.config import Choice, ConfigError, Range
from ensemble.nn.precision import cuda_dtype


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"  # linear | cosine | constant
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (CUDA: bf16 from compute capability 8.0, else fp16; CPU: fp32) | fp32 | fp16 | bf16
    gradient_checkpointing: bool = False
    eval_every: int = 0  # optimizer steps between evaluations; 0 = once per epoch
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    max_steps: int = 0  # 0 = run all epochs
    seed: int = 42
    awp_eps: float = 0.0  # adversarial weight perturbation size (relative); 0 = off
    awp_lr: float = 1.0
    awp_start_epoch: float = 1.0

    constraints: ClassVar[dict] = {
        "epochs": Range(0), "batch_size": Range(1), "grad_accum": Range(1), "lr": Range(0, low_open=True),
        "weight_decay": Range(0), "warmup_ratio": Range(0, 1), "scheduler": Choice("linear", "cosine", "constant"),
        "max_grad_norm": Range(0), "precision": Choice("auto", "fp32", "fp16", "bf16"), "eval_every": Range(0),
        "patience": Range(0), "max_steps": Range(0), "awp_eps": Range(0), "awp_lr": Range(0),
        "awp_start_epoch": Range(0)}


@dataclass
class TrainResult:
    best_score: float = math.inf
    best_step: int = 0
    steps: int = 0
    history: list[dict] = field(default_factory=list)


#: Accelerate's mixed-precision names; with "fp16" it trains through a torch.amp.GradScaler.
ACCELERATE_PRECISION = {torch.float32: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}


def mixed_precision(precision: str, device: torch.device, key: str = "train.precision") -> str:
    """Accelerate's mixed-precision name for a params precision on a device (ensemble.nn.precision)."""
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            raise ConfigError(f"params {key}: {precision!r} needs a CUDA device; on {device} use fp32 or auto")
        return "no"
    return ACCELERATE_PRECISION[cuda_dtype(precision, device, key)]


def resolve_device(name: str, allow_cpu_fallback: bool = False) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'auto' -> torch.device, with a clear error for a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        index = device.index or 0
        if index >= count:
            if allow_cpu_fallback:
                print(f"device {name} is not available ({count} CUDA device(s)); falling back to cpu "
                      f"(allowed by params)")
                return torch.device("cpu")
            raise ConfigError(f"device {name!r} requested but this machine has {count} CUDA device(s); "
                             f"set the model's devices to [cpu] in params.yaml (or allow cpu_fallback)")
    return device


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Torch intra-op threads set to `n` for the block (None: unchanged), restored afterwards. Tiny CPU
    steps run faster on one thread: on a shared 2-core box two OpenMP threads spin-wait on each other."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def is_distributed() -> bool:
    from ensemble.nn.distributed import is_distributed as distributed

    return distributed()


def make_accelerator(cfg: TrainConfig, device: torch.device):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if not is_distributed():
        # Accelerate's state is a process singleton; each fold/model may ask for other settings.
        AcceleratorState._reset_state(reset_partial_state=True)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
    from accelerate.utils import InitProcessGroupKwargs

    from ensemble.nn.distributed import process_group_kwargs

    return Accelerator(
        kwargs_handlers=[InitProcessGroupKwargs(**process_group_kwargs())],
        mixed_precision=mixed_precision(cfg.precision, device),
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=device.type == "cpu",
    )


def _schedule(name: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if name == "constant":
            return 1.0
        raise ValueError(f"unknown scheduler {name!r} (linear, cosine, constant)")

    return factor


class _AWP:
    """Adversarial weight perturbation: push trainable weights up the loss gradient, within a
    relative box of size eps, take a second backward there, then restore."""

    def __init__(self, model: nn.Module, eps: float, lr: float):
        self.model, self.eps, self.lr = model, eps, lr
        self.backup: dict[str, torch.Tensor] = {}

    def perturb(self) -> None:
        for name, p in self.model.named_parameters():
            if not p.requires_grad or p.grad is None or p.ndim < 2:
                continue
            grad_norm, weight_norm = p.grad.norm(), p.data.norm()
            if grad_norm == 0 or not torch.isfinite(grad_norm):
                continue
            self.backup[name] = p.data.clone()
            bound = self.eps * p.data.abs()
            step = self.lr * p.grad / (grad_norm + 1e-6) * (weight_norm + 1e-6)
            p.data.add_(step)
            p.data.copy_(torch.max(torch.min(p.data, self.backup[name] + bound), self.backup[name] - bound))

    def restore(self) -> None:
        for name, p in self.model.named_parameters():
            if name in self.backup:
                p.data.copy_(self.backup[name])
        self.backup.clear()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the trainable weights: the best checkpoint (LoRA: MBs, not the frozen base)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def train_loop(
    model: nn.Module,
    train_loader: Iterable[dict],
    loss_fn: Callable[[nn.Module, dict], torch.Tensor],
    cfg: TrainConfig,
    device: torch.device,
    param_groups: list[dict] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train `model` in place and leave it holding the best weights by `evaluate` (lower is better).

    loss_fn(model, batch) -> scalar loss; evaluate(model) -> validation log loss. Without `evaluate`
    the last weights are kept.
    """
    accelerator = make_accelerator(cfg, device)
    torch.manual_seed(cfg.seed)
    if cfg.gradient_checkpointing:
        if not hasattr(model, "activation_checkpointing_enable"):
            raise ConfigError(f"params train.gradient_checkpointing: true, but {type(model).__name__} cannot "
                              f"checkpoint activations; set it to false")
        model.activation_checkpointing_enable()
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    for g in groups:
        g.setdefault("lr", cfg.lr)
        g.setdefault("weight_decay", cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    batches_per_epoch = len(train_loader)  # type: ignore[arg-type]  (this process's share under DDP)
    if batches_per_epoch == 0:
        raise ValueError("no training batches: the training set is empty")
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    # Accelerate steps a prepared scheduler once per process per optimizer step.
    n = accelerator.num_processes
    scheduler = accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(cfg.scheduler, int(cfg.warmup_ratio * total) * n, total * n)))
    awp = _AWP(model, cfg.awp_eps, cfg.awp_lr) if cfg.awp_eps > 0 else None
    eval_every = cfg.eval_every or steps_per_epoch

    result, best_state, bad_evals, step, running = TrainResult(), None, 0, 0, None
    bar = progress.bar(total, desc, enabled=accelerator.is_local_main_process)
    timer, main = progress.Timer(), accelerator.is_local_main_process
    model.train()
    stop = False
    while not stop:
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                accelerator.backward(loss)
                if awp is not None and step / steps_per_epoch >= cfg.awp_start_epoch:
                    awp.perturb()
                    accelerator.backward(loss_fn(model, batch))
                    awp.restore()
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            value = loss.detach().float().item()
            running = value if running is None else 0.95 * running + 0.05 * value
            if not accelerator.sync_gradients:
                continue
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if main and desc and (step % steps_per_epoch == 0 or step == total) and evaluate is None:
                progress.log_quiet(f"{desc}: step {step}/{total} (epoch {step / steps_per_epoch:.2f}), "
                                   f"train loss {running:.4f}, {timer.seconds:.1f} s")
            if evaluate is not None and (step % eval_every == 0 or step == total):
                model.eval()
                score = float(evaluate(accelerator.unwrap_model(model)))
                model.train()
                result.history.append({"step": step, "train_loss": running, "valid_logloss": score})
                if score < result.best_score:
                    result.best_score, result.best_step, bad_evals = score, step, 0
                    best_state = trainable_state(accelerator.unwrap_model(model))
                else:
                    bad_evals += 1
                bar.set_postfix(loss=f"{running:.4f}", valid=f"{score:.4f}", best=f"{result.best_score:.4f}")
                if main and desc:
                    progress.log_quiet(f"{desc}: step {step}/{total} (epoch {step / steps_per_epoch:.2f}), train loss "
                                       f"{running:.4f}, held-out {score:.4f} (best {result.best_score:.4f}), "
                                       f"{timer.seconds:.1f} s")
                if cfg.patience and bad_evals >= cfg.patience:
                    stop = True
            if step >= total:
                stop = True
            if stop:
                break
    bar.close()
    result.steps = step
    model = accelerator.unwrap_model(model)
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    accelerator.free_memory()
    return result


def layer_depth(name: str, n_layers: int) -> int:
    """A transformer parameter's depth for layer-wise learning rates and freezing: 0 for the
    embeddings, i+1 for layer i, n_layers for anything else (top norms, DeBERTa's relative
    embeddings)."""
    import re

    if ".embeddings." in name:
        return 0
    m = re.search(r"\.layers?\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else n_layers
