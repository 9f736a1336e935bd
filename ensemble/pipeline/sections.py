"""Every params.yaml section and the config class that checks it: one table, for the places that check a
whole params file at once (profiles, the tests that hold params.yaml to the code's defaults). Stages read
only their own section (config.read_section)."""

from __future__ import annotations

import importlib
from typing import Any

from ensemble.core.config import ConfigError, from_dict
from ensemble.models import REGISTRY, model_class

#: the sections that are not a model's; a model's section is checked by its registered class's Config
OTHER_SECTIONS: dict[str, str] = {
    "data": "ensemble.core.data:DataConfig",
    "demo": "ensemble.demo:DemoConfig",
    "folds": "ensemble.core.folds:FoldsConfig",
    "blend": "ensemble.blend.config:BlendConfig",
}


def sections() -> tuple[str, ...]:
    """Every section a params file may hold: the pipeline's and one per registered model (now)."""
    return (*OTHER_SECTIONS, *REGISTRY)


def section_class(name: str) -> type:
    if name in REGISTRY:
        return model_class(name).Config
    module, cls = OTHER_SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_params(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Every section of a whole params file against its config class: unknown sections, keys, types,
    choices and ranges are ConfigErrors naming the key. Returns the built configs by section."""
    unknown = sorted(set(params) - set(sections()))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(sections())}")
    for name, values in params.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name} is {values!r}; expected a mapping of keys")
    # a model section through its model, which also checks what one key cannot (e.g. llm.infer_max_tokens >= max_len)
    models = {name: model_class(name)(values) for name, values in params.items() if name in REGISTRY}
    built = {name: models[name].config if name in models else from_dict(section_class(name), values, name)
             for name, values in params.items()}
    n_splits = built["folds"].n_splits if "folds" in built else from_dict(section_class("folds"), {}).n_splits
    for model in models.values():  # `<model>.folds` against the folds the run will have
        model.trained_folds(n_splits)
    return built
