"""Base-model registry: params.yaml names a model, the registry finds its class (imported lazily, so
LightGBM users never import torch)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ensemble.models.base import CONFIG_FILE, BaseModel

REGISTRY: dict[str, str] = {
    "lgbm": "ensemble.models.lgbm:LGBMModel",
    "dual_tower": "ensemble.models.dual_tower:DualTowerModel",
    "llm": "ensemble.models.llm:LLMModel",
}


def model_class(name: str) -> type[BaseModel]:
    if name not in REGISTRY:
        from ensemble.core.config import ConfigError

        raise ConfigError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, config: dict | None = None) -> BaseModel:
    return model_class(name)(config or {})


def load(path: str | Path, **overrides) -> BaseModel:
    name = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))["model"]
    return model_class(name).load(path, **overrides)
