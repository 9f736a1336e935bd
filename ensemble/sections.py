"""Every params.yaml section and the config class that checks it: one table, for the places that check a
whole params file at once (profiles, the tests that hold params.yaml to the code's defaults). Stages read
only their own section (config.read_section)."""

from __future__ import annotations

import importlib
from typing import Any

from .config import ConfigError, from_dict

SECTIONS: dict[str, str] = {
    "data": "ensemble.data:DataConfig",
    "demo": "ensemble.demo:DemoConfig",
    "folds": "ensemble.folds:FoldsConfig",
    "lgbm": "ensemble.models.lgbm:LGBMConfig",
    "dual_tower": "ensemble.models.dual_tower:DualTowerConfig",
    "llm": "ensemble.models.llm:LLMConfig",
    "blend": "ensemble.blend:BlendConfig",
}


def section_class(name: str) -> type:
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_params(params: dict[str, Any], source: str = "params.yaml") -> None:
    """Every section of a whole params file against its config class: unknown sections, keys, types,
    choices and ranges are ConfigErrors naming the key."""
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(map(str, unknown))}; known: {', '.join(SECTIONS)}")
    for name, values in params.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name} is {values!r}; expected a mapping of keys")
        from_dict(section_class(name), values, name)
