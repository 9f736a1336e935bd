"""Dual-tower (Siamese) encoder: one shared transformer reads prompt+response A and prompt+response B,
a small head compares the two pooled vectors.

Sharing the weights and averaging over the A/B swap makes the model order-blind by construction,
which is what a preference judge should be; the interaction head [a, b, a-b, a*b] lets a linear
layer see the comparison directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ensemble.core.calibration import Calibration, calibration_split, class_prior, fit_calibration
from ensemble.core.config import Choice, ConfigError, Range
from ensemble.core.data import SWAP_INDEX
from ensemble.core.fingerprint import backbone_digest, tensor_digest
from ensemble.core.metrics import log_loss
from ensemble.core.targets import DistillConfig, labelled_rows, training_targets
from ensemble.models.base import LEARNS_WITH, LIBRARIES, BaseModel, FoldBudget
from ensemble.models.dual_tower.cache import TowerPooler
from ensemble.models.dual_tower.features import TowerFeatures
from ensemble.models.dual_tower.ranking import band_proba, fit_band
from ensemble.models.dual_tower.text import encode_frame, truncation_report
from ensemble.nn.batching import LengthGroupedBatches, collate_towers
from ensemble.nn.distributed import train_device
from ensemble.nn.hf import (
    EMBEDDED_MINILM,
    ModelLoadError,
    fit_embeddings,
    load_pretrained,
    load_tokenizer,
    resolve_pretrained,
    set_seed,
)
from ensemble.nn.training import (
    TrainConfig,
    intra_op_threads,
    layer_depth,
    mixed_precision,
    resolve_device,
    train_loop,
)

ENCODER_FILE = "encoder_trained.safetensors"  # the encoder weights the fold trained (none when frozen)
HEAD_FILE = "head.safetensors"
STATE_FILE = "state.json"


@dataclass
class DualTowerTrain(TrainConfig):
    """The shared loop's settings with this model's demo defaults (frozen MiniLM, CPU, ~1000 battles):
    with the encoder frozen an epoch is a pass over cached vectors, so epochs are cheap."""

    epochs: float = 8.0
    batch_size: int = 64
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    patience: int = 3


@dataclass
class DualTowerConfig(FoldBudget):
    backbone: str = EMBEDDED_MINILM
    max_len: int = 128
    truncation_side: str = "left"
    prompt_frac: float = 0.4
    pooling: str = "mean"
    head: str = "interact"
    dropout: float = 0.1
    mode: str = "classification"
    rank_margin: float = 1.0
    label_smoothing: float = 0.0
    use_features: bool = True
    calib_frac: float = 0.2  # training prompts held out to pick the checkpoint and fit temperature + prior shrinkage
    swap_augment: bool | str = True  # true | false | paired: a battle and its swap in the same optimizer step
    swap_tta: bool = True
    swap_tta_share: float = 1.0  # with swap_tta: share of battles (least certain first) given the swapped pass
    head_lr: float = 3e-3
    layer_decay: float = 1.0
    freeze_layers: int = -1
    infer_max_tokens: int = 8192
    infer_max_rows: int = 256
    pad_to_max_len: bool = False
    device: str = "auto"
    cpu_fallback: bool = False
    train: DualTowerTrain = field(default_factory=DualTowerTrain)
    distill: DistillConfig = field(default_factory=DistillConfig)  # teachers' soft labels (ensemble.pipeline.distill)

    constraints: ClassVar[dict] = {"swap_tta_share": Range(0.0, 1.0), "swap_augment": Choice(True, False, "paired"),
        "truncation_side": Choice("left", "right"), "pooling": Choice("mean", "cls"),
        "head": Choice("interact", "concat"), "mode": Choice("classification", "ranking"), "max_len": Range(16),
        "prompt_frac": Range(0, 1, True, True), "dropout": Range(0, 1, high_open=True),
        "rank_margin": Range(0, low_open=True), "label_smoothing": Range(0, 1, high_open=True),
        "calib_frac": Range(0, 0.9, high_open=True), "head_lr": Range(0), "layer_decay": Range(0, 1, low_open=True),
        "freeze_layers": Range(-1), "infer_max_tokens": Range(1), "infer_max_rows": Range(1)}

    def problems(self):
        if self.distill.on and self.mode == "ranking":
            yield "distill", "soft targets need mode: classification (a ranking score has no class probabilities)"
        if self.infer_max_tokens < self.max_len:
            yield "infer_max_tokens", f"{self.infer_max_tokens} is below one tower (max_len = {self.max_len})"


# ----------------------------------------------------------------------------- network

class DualTowerNet(nn.Module):
    """Shared encoder + pooling + comparison head. Both towers of a batch go through the encoder in
    one call (rows 0..n-1 tower A, n..2n-1 tower B)."""

    def __init__(self, encoder: nn.Module, n_features: int, cfg: DualTowerConfig):
        super().__init__()
        self.encoder = encoder
        self.pooling = cfg.pooling
        self.mode = cfg.mode
        self.head_kind = cfg.head
        dim = encoder.config.hidden_size + n_features
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.mode == "classification":
            self.head = nn.Linear(dim * (4 if cfg.head == "interact" else 2), 3)
        else:
            self.head = nn.Linear(dim, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def activation_checkpointing_enable(self) -> None:
        """The encoder's layers recompute their activations in backward (train_loop, gradient_checkpointing)."""
        self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0].float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float()

    @staticmethod
    def join(pooled: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        return pooled if features is None else torch.cat([pooled, features.float()], dim=-1)

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, 3) logits of 'a vs b' (classification mode)."""
        parts = [a, b, a - b, a * b] if self.head_kind == "interact" else [a, b]
        return self.head(self.dropout(torch.cat(parts, dim=-1)))

    def score(self, v: torch.Tensor) -> torch.Tensor:
        """(n,) quality score of each tower (ranking mode)."""
        return self.head(self.dropout(v)).squeeze(-1)

    def forward(self, input_ids=None, attention_mask=None, features=None, pooled=None):
        """Logits (classification) or score differences (ranking). `pooled` skips the encoder (frozen
        encoder, cached vectors) but still goes through forward, so DDP's gradient sync sees it."""
        if pooled is None:
            pooled = self.pool(input_ids, attention_mask)
        a, b = self.join(pooled, features).chunk(2)
        if self.mode == "classification":
            return self.compare(a, b)
        return self.score(a) - self.score(b)


# ----------------------------------------------------------------------------- the model

class DualTowerModel(BaseModel):
    name = "dual_tower"
    Config = DualTowerConfig
    fitted_attr = "net"
    runtime_keys = ("device", "cpu_fallback", "infer_max_tokens", "infer_max_rows", "pad_to_max_len", "swap_tta_share")
    learns_with = (*LEARNS_WITH, "ensemble.models.dual_tower", "ensemble.models.dual_tower.model",
                   "ensemble.models.dual_tower.cache", "ensemble.models.dual_tower.features",
                   "ensemble.models.dual_tower.ranking", "ensemble.models.dual_tower.text", "ensemble.core.features",
                   "ensemble.nn.hf", "ensemble.nn.batching", "ensemble.nn.training",
                   "ensemble.nn.precision", "ensemble.nn.distributed")
    libraries = (*LIBRARIES, "torch", "transformers", "tokenizers", "safetensors", "accelerate")

    def __init__(self, config=None, cache=None, **overrides):
        super().__init__(config, cache, **overrides)
        self.net: DualTowerNet | None = None
        self.tokenizer = None
        self.features: TowerFeatures | None = None
        self.band: tuple[float, float] = (0.5, 1.0)
        self.calibration = Calibration()
        self.history: list[dict] = []
        self.pooler: TowerPooler | None = None  # towers -> pooled vectors (cached when frozen)

    # -- pieces

    def _device(self) -> torch.device:
        device = resolve_device(self.config.device, self.config.cpu_fallback)
        return train_device([device], listed=False) or device  # under DDP: this process's GPU

    def _build(self, backbone: str, n_features: int) -> None:
        from transformers import AutoModel

        self.tokenizer = load_tokenizer(backbone, self.config.max_len)
        encoder = load_pretrained(AutoModel, backbone, "model", dtype=torch.float32)
        if not hasattr(encoder, "config") or not hasattr(encoder.config, "hidden_size"):
            raise ConfigError(f"params dual_tower.backbone: {backbone} is not an encoder with a hidden_size")
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit and getattr(encoder.config, "position_biased_input", True) and self.config.max_len > limit:
            raise ConfigError(f"params dual_tower.max_len: {self.config.max_len} exceeds the {limit} absolute "
                              f"positions of {backbone}")
        fit_embeddings(encoder, self.tokenizer)  # deterministic: the frozen rows are checked on load
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):  # unused by our pooling; frozen so DDP sees no idle grads
            pooler.requires_grad_(False)
        self.net = DualTowerNet(encoder, n_features, self.config)
        self.pooler = TowerPooler(self.net, self.tokenizer, self.config, self._frozen_by_config(), self.cache)

    def _encode(self, frame: pd.DataFrame) -> dict:
        ids_a, ids_b = encode_frame(frame, self.tokenizer, self.config)
        feats = self.features.transform(frame, self.cache) if self.features is not None else None
        return {"a": ids_a, "b": ids_b, "features": feats}

    def _n_layers(self) -> int:
        return int(getattr(self.net.encoder.config, "num_hidden_layers", 0) or 0)

    def _frozen_by_config(self) -> bool:
        """Whether _param_groups leaves no encoder weight trainable (same rule as there)."""
        n = self._n_layers()
        freeze = n if self.config.freeze_layers < 0 else self.config.freeze_layers
        return 0 < freeze >= n

    def _stays_frozen(self, name: str) -> bool:
        """An encoder parameter that fine-tuning leaves as the backbone has it (freeze_layers)."""
        n = self._n_layers()
        freeze = n if self.config.freeze_layers < 0 else self.config.freeze_layers
        return freeze > 0 and layer_depth(name, n) <= freeze

    def _param_groups(self) -> list[dict]:
        """Head at head_lr; encoder layer i at lr * layer_decay^(depth from the top), embeddings
        lowest; no weight decay on biases and norms; frozen bottom layers left out."""
        cfg, net = self.config, self.net
        n_layers = self._n_layers()
        groups: dict[tuple, dict] = {}
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("encoder."):
                if self._stays_frozen(name):
                    p.requires_grad_(False)
                    continue
                lr = cfg.train.lr * cfg.layer_decay ** (n_layers - layer_depth(name, n_layers))
            else:
                lr = cfg.head_lr or cfg.train.lr
            wd = 0.0 if p.ndim < 2 else cfg.train.weight_decay
            groups.setdefault((lr, wd), {"params": [], "lr": lr, "weight_decay": wd})["params"].append(p)
        return list(groups.values())

    def _loss(self, net: DualTowerNet, batch: dict) -> torch.Tensor:
        out = net(batch.get("input_ids"), batch.get("attention_mask"), batch.get("features"), batch.get("pooled"))
        y = batch["labels"]
        if self.config.mode == "classification":
            return F.cross_entropy(out.float(), y, label_smoothing=self.config.label_smoothing)
        d, m = out.float(), self.config.rank_margin
        return torch.where(y == 0, F.relu(m - d), torch.where(y == 1, F.relu(m + d), d * d)).mean()

    def _collate(self, enc: dict, labels: np.ndarray, pooled: tuple[np.ndarray, np.ndarray] | None = None):
        return partial(collate_towers, enc=enc, labels=labels, pad_id=self.tokenizer.pad_token_id, pooled=pooled)

    def _joined(self, pa, pb, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """Head inputs of towers A and B: pooled vectors (+ their features), on the head's device."""
        net, dev = self.net.eval(), self.net.head.weight.device
        return tuple(net.join(torch.as_tensor(p).to(dev),
                              None if feats is None else torch.as_tensor(feats[:, i]).to(dev))
                     for i, p in enumerate((pa, pb)))

    @torch.inference_mode()
    def _score_diff(self, pa, pb, feats) -> np.ndarray:
        va, vb = self._joined(pa, pb, feats)
        return (self.net.score(va) - self.net.score(vb)).double().cpu().numpy()  # swapped battle: exactly -d

    @torch.inference_mode()
    def _proba(self, pa, pb, feats) -> np.ndarray:
        """Probabilities from pooled vectors (+ features); swap averaging if configured."""
        if self.config.mode == "ranking":
            return band_proba(self._score_diff(pa, pb, feats), *self.band)
        va, vb = self._joined(pa, pb, feats)
        p = torch.softmax(self.net.compare(va, vb).double(), dim=-1).cpu().numpy()
        if self.config.swap_tta:
            # a separate call on (vb, va): a swapped battle computes the very same two tensors
            q = torch.softmax(self.net.compare(vb, va).double(), dim=-1).cpu().numpy()[:, SWAP_INDEX]
            p = (p + q) / 2.0
        return p

    # -- public API

    def backbone_identity(self) -> str:
        return backbone_digest(resolve_pretrained(self.config.backbone))

    def check_resources(self, frames: list[pd.DataFrame]) -> None:
        """Refuse, before any fold trains, a precision the device does not run (ensemble.nn.precision)."""
        mixed_precision(self.config.train.precision, self._device(), "dual_tower.train.precision")

    def _fit(self, train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
        cfg = self.config
        set_seed(cfg.train.seed)
        device = self._device()
        mixed_precision(cfg.train.precision, device, "dual_tower.train.precision")  # before any encoding
        # held-out training prompts pick the checkpoint and fit the calibration; `valid` (the fold's
        # OOF rows) is never looked at, so nothing is selected on the rows that score the model
        prior = class_prior(train["label"].to_numpy()[labelled_rows(train)], symmetric=cfg.swap_tta)
        fit_rows, cal_rows = calibration_split(train, cfg.calib_frac, cfg.train.seed)
        held_out = train.iloc[cal_rows].reset_index(drop=True)
        train = train.iloc[fit_rows].reset_index(drop=True)
        self.calibration = Calibration(prior=prior)
        self.features = TowerFeatures().fit(train, self.cache) if cfg.use_features else None
        n_feat = len(self.features.names) if self.features is not None else 0
        self._build(cfg.backbone, n_feat)
        set_seed(cfg.train.seed)  # the head's init must not depend on what loading consumed
        groups, frozen = self._param_groups(), self._frozen_by_config()
        if frozen:
            self.net.to(device)

        labels, enc = train["label"].to_numpy(dtype=np.int64), self._encode(train)
        pooled = None
        if frozen:  # the run's vectors of these towers (TowerPooler.frozen_pooled), as numpy for the loader
            pooled = tuple(v.numpy() for v in self.pooler.frozen_pooled(enc))
        lengths = np.maximum([len(x) for x in enc["a"]], [len(x) for x in enc["b"]])
        if cfg.swap_augment:
            lengths = np.concatenate([lengths, lengths])
        paired = cfg.swap_augment == "paired"  # a battle and its swap in one optimizer step
        sampler = LengthGroupedBatches(lengths, cfg.train.batch_size, cfg.train.seed, paired=paired)
        loader = torch.utils.data.DataLoader(range(len(lengths)), batch_sampler=sampler,
                                             collate_fn=self._collate(enc, training_targets(train), pooled))

        held_out_loss, valid = None, held_out  # the held-out log loss the loop selects on
        if len(valid):
            valid_enc, valid_y = self._encode(valid), valid["label"].to_numpy(dtype=np.int64)
            if frozen:  # into the run's store now, with the process's threads (the loop below runs on one)
                self.pooler.pooled(valid_enc)

            def loss_on_held_out(net) -> float:
                pa, pb = self.pooler.pooled(valid_enc)  # frozen: read from the run's store
                if cfg.mode == "ranking":  # selection metric: the best band this ranking allows
                    d = self._score_diff(pa, pb, valid_enc["features"])
                    return log_loss(valid_y, band_proba(d, *fit_band(d, valid_y)))
                return log_loss(valid_y, self._proba(pa, pb, valid_enc["features"]))

            held_out_loss = loss_on_held_out

        # frozen encoder: every op of a step is microseconds, and intra-op threads only add
        # synchronisation (on a busy 2-core box, 100x); the previous setting comes back after
        with intra_op_threads(1 if frozen and device.type == "cpu" else None):
            result = train_loop(self.net, loader, self._loss, cfg.train, device,
                                param_groups=groups, evaluate=held_out_loss, desc="dual_tower")
        self.history = result.history
        if cfg.mode == "ranking":
            pa, pb = self.pooler.pooled(enc)
            self.band = fit_band(self._score_diff(pa, pb, enc["features"]), labels)
        if len(held_out):
            self.calibration = fit_calibration(self._uncalibrated(held_out), held_out["label"].to_numpy(), prior)

    def _predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibration.apply(self._uncalibrated(frame))

    def _uncalibrated(self, frame: pd.DataFrame) -> np.ndarray:
        enc = self._encode(frame)
        pa, pb = self.pooler.pooled(enc)
        p = self._proba(pa, pb, enc["features"])
        return p / p.sum(axis=1, keepdims=True)

    def input_report(self, frame: pd.DataFrame) -> dict:
        """How much of each tower's text (prompt + response) survives truncation at max_len."""
        self.check_fitted("input_report")
        return truncation_report(frame, self.tokenizer, self.config)

    def _save_state(self, path: Path) -> None:
        """Head, scaler, calibration and only the encoder weights this fold trained: the frozen ones
        are re-read from `backbone` on load and checked against their digest (a frozen MiniLM
        costs nothing per fold instead of 87 MB)."""
        from safetensors.torch import save_file

        encoder = {k: v for k, v in self.net.encoder.state_dict().items()}
        trained = {k: v.detach().cpu().contiguous() for k, v in encoder.items()
                   if not self._stays_frozen(f"encoder.{k}")}
        frozen = [(k, v) for k, v in encoder.items() if self._stays_frozen(f"encoder.{k}")]
        if trained:
            save_file(trained, str(path / ENCODER_FILE))
        head = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                if not k.startswith("encoder.")}
        save_file(head, str(path / HEAD_FILE))
        state = {"band": list(self.band), "history": self.history, "calibration": self.calibration.to_json(),
                 "features": self.features.to_json() if self.features is not None else None,
                 "frozen_encoder_digest": tensor_digest(frozen)}
        (path / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        self.features = TowerFeatures.from_json(state["features"]) if state["features"] else None
        self.band = tuple(state["band"])
        self.history = state.get("history", [])
        self.calibration = Calibration.from_json(state["calibration"])
        n_feat = len(self.features.names) if self.features is not None else 0
        self._build(self.config.backbone, n_feat)
        encoder = self.net.encoder.state_dict()
        digest = tensor_digest((k, v) for k, v in encoder.items() if self._stays_frozen(f"encoder.{k}"))
        if digest != state["frozen_encoder_digest"]:
            raise ModelLoadError(f"{path}: dual_tower.backbone {self.config.backbone} no longer has the weights "
                                 f"this fold was trained on; retrain the fold (dvc repro)")
        trained = load_file(str(path / ENCODER_FILE)) if (path / ENCODER_FILE).is_file() else {}
        expected = {k for k in encoder if not self._stays_frozen(f"encoder.{k}")}
        if set(trained) != expected:  # the trained and the frozen weights together are the whole encoder
            raise ModelLoadError(f"{path / ENCODER_FILE}: holds {len(trained)} encoder tensors, freeze_layers trains "
                                 f"{len(expected)} (missing {sorted(expected - set(trained))[:3]}, "
                                 f"unexpected {sorted(set(trained) - expected)[:3]}); retrain the fold (dvc repro)")
        self.net.encoder.load_state_dict(trained, strict=False)  # {} (frozen encoder): nothing to load
        missing, unexpected = self.net.load_state_dict(load_file(str(path / HEAD_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ModelLoadError(f"{path}: head weights do not match the config (missing {missing}, "
                                 f"unexpected {unexpected}); retrain the fold (dvc repro)")
        self.net.to(self._device()).eval()
