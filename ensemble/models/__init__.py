"""Base-model registry: the one place model names are written. params.yaml names a model (its section),
dvc.yaml runs one stage per registered model (`foreach` over ensemble/models/registry.yaml), the blend
defaults to all of them. Classes are imported lazily, so LightGBM users never import torch.

Adding a model: its package under ensemble/models/<name>/ (config, network, text encoding, caches), one
line in registry.yaml, its params section in params.yaml, and its tests. `register()` adds one at run
time (a model from a test folder or a plugin).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import yaml

from ensemble.models.base import CONFIG_FILE, BaseModel

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
#: name -> "module:Class"; read from registry.yaml, which dvc.yaml's `vars` reads too
REGISTRY: dict[str, str] = {name: entry["class"] for name, entry in
                            yaml.safe_load(REGISTRY_FILE.read_text(encoding="utf-8"))["models"].items()}


def register(name: str, target: str) -> None:
    """Make `name` ("module:Class", a BaseModel subclass) a model of this process."""
    REGISTRY[name] = target


def is_registered(name: str) -> bool:
    """A model this project trains; any other name in blend.models is a model from elsewhere (its
    prediction files only)."""
    return name in REGISTRY


def model_class(name: str) -> type[BaseModel]:
    if name not in REGISTRY:
        from ensemble.core.config import ConfigError

        raise ConfigError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create(name: str, config: dict | None = None, cache=None) -> BaseModel:
    return model_class(name)(config or {}, cache=cache)


def load(path: str | Path, cache=None, runtime: dict | None = None) -> BaseModel:
    """A saved fold model; `runtime` (today's params section) sets its run-time keys (devices, budgets)."""
    name = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))["model"]
    return model_class(name).load(path, cache=cache, runtime=runtime)
