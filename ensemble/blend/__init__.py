"""Blenders fitted on the base models' OOF probabilities, registered like the models: `blend.method`
names one, its params subsection is `blend.<name>`, and each speaks ensemble.blend.base.Blender.

Adding a blender: its module here, one line in BLENDERS, its defaults under `blend:` in params.yaml.
"""

from __future__ import annotations

import importlib
from typing import Any

BLENDERS: dict[str, str] = {
    "prior": "ensemble.blend.baselines:PriorBlender",
    "best": "ensemble.blend.baselines:BestBlender",
    "weights": "ensemble.blend.weights:WeightsBlender",
    "greedy": "ensemble.blend.greedy:GreedyBlender",
    "stack": "ensemble.blend.stack:StackBlender",
    "select": "ensemble.blend.select:SelectBlender",
}


def blender_class(name: str):
    if name not in BLENDERS:
        from ensemble.core.config import ConfigError

        raise ConfigError(f"unknown blend method {name!r}; known: {', '.join(BLENDERS)}")
    module, cls = BLENDERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_blender(name: str, models: list[str], blend: Any = None):
    """A fresh blender `name` for `models`, configured from the blend params section `blend`."""
    return blender_class(name)(models, blend=blend)


def blender_from_json(obj: dict):
    """The fitted blender saved by Blender.to_json, whichever method fitted it."""
    return blender_class(obj["method"]).from_json(obj)
