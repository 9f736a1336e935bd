"""Dual-tower (Siamese) encoder: one shared transformer reads prompt+response A and prompt+response B,
a small head compares the two pooled vectors.

Sharing the weights and averaging over the A/B swap makes the model order-blind by construction,
which is what a preference judge should be; the interaction head [a, b, a-b, a*b] lets a linear
layer see the comparison directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..battle_text import CHARS_PER_TOKEN
from ..batching import LengthGroupedBatches, pad
from ..config import ConfigError
from ..data import SWAP_INDEX, as_turns
from ..hf import EMBEDDED_MINILM, load_pretrained, load_tokenizer, set_seed, token_budget_batches
from ..probe import Calibration, calibration_split, class_prior, fit_calibration
from ..ranking import band_log_loss, band_proba, fit_band
from ..tower_cache import FRAME_CACHE as _FRAME_CACHE, FRAME_CACHE_SIZE as _FRAME_CACHE_SIZE, \
    POOLED_CACHE as _POOLED_CACHE, ids_key as _ids_key, remember as _remember, tower_key as _tower_key
from ..tower_features import TowerFeatures
from ..tower_text import build_tower, encode_frame, special_ids
from ..training import TrainConfig, intra_op_threads, mixed_precision, resolve_device, train_loop
from .base import BaseModel

ENCODER_DIR = "encoder"
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
class DualTowerConfig:
    backbone: str = EMBEDDED_MINILM
    max_len: int = 128
    truncation: str = "left"
    prompt_frac: float = 0.4
    pooling: str = "mean"
    head: str = "interact"
    dropout: float = 0.1
    mode: str = "classification"
    rank_margin: float = 1.0
    label_smoothing: float = 0.0
    use_features: bool = True
    calib_frac: float = 0.2  # training prompts held out to pick the checkpoint and fit temperature + prior shrinkage
    swap_augment: bool = True
    swap_tta: bool = True
    head_lr: float = 3e-3
    layer_decay: float = 1.0
    freeze_layers: int = -1
    infer_max_tokens: int = 8192
    infer_max_rows: int = 256
    pad_to_max_len: bool = False
    device: str = "auto"
    cpu_fallback: bool = False
    train: DualTowerTrain = field(default_factory=DualTowerTrain)


_CHOICES = {"truncation": ("left", "right"), "pooling": ("mean", "cls"),
            "head": ("interact", "concat"), "mode": ("classification", "ranking")}


def _check_config(cfg: DualTowerConfig) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"params dual_tower.{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    if cfg.max_len < 16:
        raise ConfigError(f"params dual_tower.max_len: {cfg.max_len} is too small (at least 16 tokens)")
    if not 0.0 < cfg.prompt_frac < 1.0:
        raise ConfigError(f"params dual_tower.prompt_frac: {cfg.prompt_frac} must lie strictly between 0 and 1")
    if not 0.0 <= cfg.calib_frac < 0.9:
        raise ConfigError(f"params dual_tower.calib_frac: {cfg.calib_frac} must lie in [0, 0.9)")
    if cfg.infer_max_tokens < cfg.max_len:
        raise ConfigError(f"params dual_tower.infer_max_tokens: {cfg.infer_max_tokens} is below one tower "
                          f"(max_len = {cfg.max_len})")


# ----------------------------------------------------------------------------- network

class DualTowerNet(nn.Module):
    """Shared encoder + pooling + comparison head. Both towers of a batch go through the encoder in
    one call (rows 0..n-1 tower A, n..2n-1 tower B)."""

    def __init__(self, encoder: nn.Module, n_features: int, cfg: DualTowerConfig):
        super().__init__()
        self.encoder = encoder
        self.pooling, self.mode, self.head_kind = cfg.pooling, cfg.mode, cfg.head
        dim = encoder.config.hidden_size + n_features
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.mode == "classification":
            self.head = nn.Linear(dim * (4 if cfg.head == "interact" else 2), 3)
        else:
            self.head = nn.Linear(dim, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.encoder.gradient_checkpointing_enable(**kwargs)

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

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        _check_config(self.config)
        self.net: DualTowerNet | None = None
        self.tokenizer = None
        self.features: TowerFeatures | None = None
        self.band: tuple[float, float] = (0.5, 1.0)
        self.calibration = Calibration()
        self.history: list[dict] = []
        self._fp: str | None = None  # fingerprint of the (frozen) encoder weights

    # -- pieces

    def _device(self) -> torch.device:
        return resolve_device(self.config.device, self.config.cpu_fallback)

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
        if len(self.tokenizer) > encoder.get_input_embeddings().num_embeddings:
            encoder.resize_token_embeddings(len(self.tokenizer))
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):  # unused by our pooling; frozen so DDP sees no idle grads
            pooler.requires_grad_(False)
        self.net = DualTowerNet(encoder, n_features, self.config)
        self._fp = None

    def _encode(self, frame: pd.DataFrame) -> dict:
        ids_a, ids_b = encode_frame(frame, self.tokenizer, self.config)
        feats = self.features.transform(frame) if self.features is not None else None
        return {"a": ids_a, "b": ids_b, "features": feats}

    def _n_layers(self) -> int:
        return int(getattr(self.net.encoder.config, "num_hidden_layers", 0) or 0)

    def _frozen_by_config(self) -> bool:
        """Whether _param_groups leaves no encoder weight trainable (same rule as there)."""
        n = self._n_layers()
        freeze = n if self.config.freeze_layers < 0 else self.config.freeze_layers
        return 0 < freeze >= n

    def _param_groups(self) -> list[dict]:
        """Head at head_lr; encoder layer i at lr * layer_decay^(depth from the top), embeddings
        lowest; no weight decay on biases and norms; frozen bottom layers left out."""
        cfg, net = self.config, self.net
        n_layers = self._n_layers()
        freeze = n_layers if cfg.freeze_layers < 0 else cfg.freeze_layers
        groups: dict[tuple, dict] = {}
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("encoder."):
                depth = _layer_depth(name, n_layers)
                if freeze > 0 and depth <= freeze:
                    p.requires_grad_(False)
                    continue
                lr = cfg.train.lr * cfg.layer_decay ** (n_layers - depth)
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
        loss = torch.where(y == 0, F.relu(m - d), torch.where(y == 1, F.relu(m + d), d * d))
        return loss.mean()

    def _collate(self, enc: dict, labels: np.ndarray, pooled: tuple[np.ndarray, np.ndarray] | None = None):
        """Items 0..n-1 are the battles, n..2n-1 the same battles swapped (labels [1,0,2]). With
        `pooled` (frozen encoder) batches carry cached vectors instead of token ids."""
        pad_id = self.tokenizer.pad_token_id
        n = len(enc["a"])

        def collate(items: list[int]) -> dict:
            rows = np.array([i % n for i in items])
            swapped = np.array([i >= n for i in items])
            batch = {"labels": torch.from_numpy(np.where(swapped, np.asarray(SWAP_INDEX)[labels[rows]],
                                                         labels[rows]))}
            if pooled is not None:
                pa = np.where(swapped[:, None], pooled[1][rows], pooled[0][rows])
                pb = np.where(swapped[:, None], pooled[0][rows], pooled[1][rows])
                batch["pooled"] = torch.from_numpy(np.concatenate([pa, pb]))
            else:
                a = [enc["b"][r] if s else enc["a"][r] for r, s in zip(rows, swapped)]
                b = [enc["a"][r] if s else enc["b"][r] for r, s in zip(rows, swapped)]
                batch["input_ids"], batch["attention_mask"] = pad(a + b, pad_id)
            if enc["features"] is not None:
                f = enc["features"]
                fa = np.where(swapped[:, None], f[rows, 1], f[rows, 0])
                fb = np.where(swapped[:, None], f[rows, 0], f[rows, 1])
                batch["features"] = torch.from_numpy(np.concatenate([fa, fb]))
            return batch

        return collate

    def _autocast(self, device: torch.device):
        amp = mixed_precision(self.config.train.precision, device)
        if amp == "no":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    # -- inference core

    @torch.inference_mode()
    def _pool_towers(self, towers: list[list[int]], order: list[int], pad_to_max_len: bool = False) -> torch.Tensor:
        """Pooled vectors (CPU float32) of towers[order[k]] at row k, encoded in that order in
        token-budget batches padded to the batch's longest tower (or to max_len when asked)."""
        cfg, net = self.config, self.net
        net.eval()
        device = next(net.parameters()).device
        lengths = np.full(len(order), cfg.max_len) if pad_to_max_len else np.array([len(towers[i]) for i in order])
        out = torch.zeros(len(order), net.encoder.config.hidden_size)
        # `order` is already longest-first (or all equal), so the stable sort inside keeps it
        for batch in token_budget_batches(lengths, cfg.infer_max_tokens, cfg.infer_max_rows):
            ids, mask = pad([towers[order[j]] for j in batch], self.tokenizer.pad_token_id,
                             cfg.max_len if pad_to_max_len else None)
            with self._autocast(device):
                out[torch.as_tensor(batch, dtype=torch.long)] = net.pool(ids.to(device), mask.to(device)).float().cpu()
        return out

    def _pair_pooled(self, enc: dict, pad_to_max_len: bool | None = None,
                     dedupe: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vectors of tower A and B for every row, in row order.

        Towers (not rows) are batched longest first, so each pads only to similar-length towers;
        ties are broken by the ids themselves, so the batches are a function of the set of towers
        only and a swapped battle meets bit-identical encoder input (exact swap symmetry). Identical
        towers (the arena repeats prompt+response pairs) are encoded once. pad_to_max_len (the
        benchmark baseline) pads every tower to max_len and keeps row order instead.
        """
        pad_to_max_len = self.config.pad_to_max_len if pad_to_max_len is None else pad_to_max_len
        towers, n = enc["a"] + enc["b"], len(enc["a"])
        if pad_to_max_len:  # row by row, the row's two towers in canonical order
            order = [j for i in range(n) for j in ((i, i + n) if towers[i] <= towers[i + n] else (i + n, i))]
        elif not dedupe:
            order = sorted(range(2 * n), key=lambda i: (-len(towers[i]), towers[i]))
        else:
            distinct = sorted({tuple(t) for t in towers}, key=lambda t: (-len(t), t))
            where = {t: k for k, t in enumerate(distinct)}
            pooled = self._pool_towers(distinct, list(range(len(distinct))))
            v = pooled[torch.as_tensor([where[tuple(t)] for t in towers], dtype=torch.long)]
            return v[:n], v[n:]
        v = torch.empty(2 * n, self.net.encoder.config.hidden_size)
        v[torch.as_tensor(order, dtype=torch.long)] = self._pool_towers(towers, order, pad_to_max_len)
        return v[:n], v[n:]

    def _fingerprint(self) -> str:
        if self._fp is None:
            import hashlib

            h = hashlib.sha1(f"{type(self.net.encoder).__name__}|{self.config.pooling}|{self.config.infer_max_tokens}|"
                             f"{self.config.infer_max_rows}|{self.config.train.precision}".encode())
            for name, t in self.net.encoder.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fp = h.hexdigest()
        return self._fp

    def _frame_pooled(self, enc: dict, pad_to_max_len: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """_pair_pooled, memoized across folds when the encoder is frozen (bit-identical either way)."""
        pad = self.config.pad_to_max_len if pad_to_max_len is None else pad_to_max_len
        if not self._frozen_by_config():
            return self._pair_pooled(enc, pad)
        key = (self._fingerprint(), str(next(self.net.parameters()).device), _ids_key(enc), pad)
        if key not in _FRAME_CACHE:
            if len(_FRAME_CACHE) >= _FRAME_CACHE_SIZE:
                _FRAME_CACHE.pop(next(iter(_FRAME_CACHE)))
            _FRAME_CACHE[key] = self._pair_pooled(enc, pad)
        return _FRAME_CACHE[key]

    @torch.inference_mode()
    def _cached_pooled(self, enc: dict) -> tuple[np.ndarray, np.ndarray]:
        """Frozen encoder only: pooled vectors of both towers, each distinct tower encoded once per
        process (not bit-stable across batchings, so used for training and evaluation only)."""
        key = self._fingerprint()
        if _POOLED_CACHE["key"] != key:
            _POOLED_CACHE["key"], _POOLED_CACHE["vectors"] = key, {}
        cache = _POOLED_CACHE["vectors"]
        towers = enc["a"] + enc["b"]
        keys = [_tower_key(t) for t in towers]
        todo = list({k: i for i, k in enumerate(keys) if k not in cache}.values())
        if todo:
            todo.sort(key=lambda i: -len(towers[i]))
            for i, vec in zip(todo, self._pool_towers(towers, todo).numpy()):
                cache[keys[i]] = vec
        n = len(enc["a"])
        vectors = np.stack([cache[k] for k in keys])
        return vectors[:n], vectors[n:]

    def _joined(self, pa, pb, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """Head inputs of towers A and B: pooled vectors (+ their features), on the head's device."""
        net = self.net
        net.eval()
        dev = net.head.weight.device
        return tuple(net.join(torch.as_tensor(p).to(dev), None if feats is None else torch.as_tensor(feats[:, i]).to(dev))
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

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> "DualTowerModel":
        cfg = self.config
        if len(train) == 0:
            raise ValueError("dual_tower: the training frame is empty")
        set_seed(cfg.train.seed)
        device = self._device()
        # held-out training prompts pick the checkpoint and fit the calibration; `valid` (the fold's
        # OOF rows) is never looked at, so nothing is selected on the rows that score the model
        prior = class_prior(train["label"].to_numpy(), symmetric=cfg.swap_tta)
        fit_rows, cal_rows = calibration_split(train, cfg.calib_frac, cfg.train.seed)
        held_out = train.iloc[cal_rows].reset_index(drop=True)
        train = train.iloc[fit_rows].reset_index(drop=True)
        self.calibration = Calibration(prior=prior)
        self.features = TowerFeatures().fit(train) if cfg.use_features else None
        n_feat = len(self.features.names) if self.features is not None else 0
        self._build(cfg.backbone, n_feat)
        set_seed(cfg.train.seed)  # the head's init must not depend on what loading consumed
        groups = self._param_groups()
        frozen = self._frozen_by_config()
        if frozen:
            self.net.to(device)

        labels = train["label"].to_numpy(dtype=np.int64)
        enc = self._encode(train)
        pooled = self._cached_pooled(enc) if frozen else None
        lengths = np.maximum([len(x) for x in enc["a"]], [len(x) for x in enc["b"]])
        if cfg.swap_augment:
            lengths = np.concatenate([lengths, lengths])
        sampler = LengthGroupedBatches(lengths, cfg.train.batch_size, cfg.train.seed)
        loader = torch.utils.data.DataLoader(range(len(lengths)), batch_sampler=sampler,
                                             collate_fn=self._collate(enc, labels, pooled))

        evaluate, valid = None, held_out
        if len(valid):
            valid_enc, valid_y = self._encode(valid), valid["label"].to_numpy(dtype=np.int64)
            valid_pooled = None
            if frozen:  # the predict path's own vectors: predict_proba(valid) after fit reuses them
                valid_pooled = self._frame_pooled(valid_enc)
                _remember(valid_enc, valid_pooled)

            def evaluate(net) -> float:
                pa, pb = valid_pooled if frozen else self._pair_pooled(valid_enc)
                if cfg.mode == "ranking":  # selection metric: the best band this ranking allows
                    d = self._score_diff(pa, pb, valid_enc["features"])
                    return band_log_loss(band_proba(d, *fit_band(d, valid_y)), valid_y)
                return band_log_loss(self._proba(pa, pb, valid_enc["features"]), valid_y)

        # frozen encoder: every op of a step is microseconds, and intra-op threads only add
        # synchronisation (on a busy 2-core box, 100x); the previous setting comes back after
        with intra_op_threads(1 if frozen and device.type == "cpu" else None):
            result = train_loop(self.net, loader, self._loss, cfg.train, device,
                                param_groups=groups, evaluate=evaluate, desc="dual_tower")
        self.history = result.history
        if cfg.mode == "ranking":
            pa, pb = pooled if frozen else self._pair_pooled(enc)
            self.band = fit_band(self._score_diff(pa, pb, enc["features"]), labels)
        if len(held_out):
            self.calibration = fit_calibration(self._uncalibrated(held_out), held_out["label"].to_numpy(), prior)
        return self

    def predict_proba(self, frame: pd.DataFrame, pad_to_max_len: bool | None = None) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("dual_tower: predict_proba before fit/load")
        if len(frame) == 0:
            return np.zeros((0, 3))
        return self.calibration.apply(self._uncalibrated(frame, pad_to_max_len))

    def _uncalibrated(self, frame: pd.DataFrame, pad_to_max_len: bool | None = None) -> np.ndarray:
        enc = self._encode(frame)
        pa, pb = self._frame_pooled(enc, pad_to_max_len)
        p = self._proba(pa, pb, enc["features"])
        return p / p.sum(axis=1, keepdims=True)

    def input_report(self, frame: pd.DataFrame) -> dict:
        """How much of each tower's text (prompt + response) survives truncation at max_len."""
        if self.net is None:
            raise RuntimeError("dual_tower: input_report before fit/load")
        cut = CHARS_PER_TOKEN * self.config.max_len
        specials = {i for i in special_ids(self.tokenizer) if i is not None}
        out: dict = {"max_len": self.config.max_len, "battles": int(len(frame))}
        towers = encode_frame(frame, self.tokenizer, self.config)
        any_cut = np.zeros(len(frame), dtype=bool)
        for side, ids in zip(("response_a", "response_b"), towers):
            texts = [[t[-cut:] for t in as_turns(p)] + [t[:cut] for t in as_turns(r)]
                     for p, r in zip(frame["prompt"], frame[side])]
            lengths = self.tokenizer([t for row in texts for t in row] or [""], add_special_tokens=False,
                                     return_attention_mask=False)["input_ids"]
            pos = iter(lengths)
            total = np.array([sum(len(next(pos)) for _ in row) for row in texts], dtype=float)
            kept = np.array([sum(t not in specials for t in tower) for tower in ids], dtype=float)
            cut_rows = kept < total
            any_cut |= cut_rows
            out[f"tower_{side}"] = {"kept_share": round(float(np.where(total > 0, kept / np.maximum(total, 1), 1).mean()), 4),
                                    "battles_cut": round(float(cut_rows.mean()), 4)}
        out["battles_cut_any"] = round(float(any_cut.mean()), 4)
        return out

    def _save_state(self, path: Path) -> None:
        from safetensors.torch import save_file

        encoder_dir = path / ENCODER_DIR
        self.net.encoder.save_pretrained(encoder_dir)
        self.tokenizer.save_pretrained(encoder_dir)
        head = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                if not k.startswith("encoder.")}
        save_file(head, str(path / HEAD_FILE))
        state = {"band": list(self.band), "history": self.history, "calibration": self.calibration.to_json(),
                 "features": self.features.to_json() if self.features is not None else None}
        (path / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

    def _load_state(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        self.features = TowerFeatures.from_json(state["features"]) if state["features"] else None
        self.band, self.history = tuple(state["band"]), state.get("history", [])
        self.calibration = Calibration.from_json(state["calibration"])
        n_feat = len(self.features.names) if self.features is not None else 0
        self._build(str(path / ENCODER_DIR), n_feat)
        missing, unexpected = self.net.load_state_dict(load_file(str(path / HEAD_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise RuntimeError(f"{path}: head weights do not match the config (missing {missing}, "
                               f"unexpected {unexpected})")
        self.net.to(self._device()).eval()



def _layer_depth(name: str, n_layers: int) -> int:
    """0 for embeddings, i+1 for transformer layer i, n_layers for anything else (top norms,
    DeBERTa's relative embeddings)."""
    import re

    if ".embeddings." in name:
        return 0
    m = re.search(r"\.layers?\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else n_layers

