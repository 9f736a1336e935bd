"""The `blend:` params section: which OOF files to blend, the method, the intervals, and one subsection per
registered blender (its Config), derived from the registry so that adding a blender adds its section."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from ensemble.blend import BLENDERS, blender_class
from ensemble.core.config import Choice, Range
from ensemble.core.degenerate import DegenerateConfig


def _default_models() -> list[str]:
    from ensemble.models import REGISTRY

    return list(REGISTRY)


BlendConfig = dataclasses.make_dataclass(
    "BlendConfig",
    [("models", list[str], field(default_factory=_default_models)),  # OOF files to blend: ours, or from elsewhere
     ("method", str, "select"),  # a blender of ensemble.blend.BLENDERS
     ("bootstrap", int, 1000),  # prompt-level bootstrap resamples for the 95% intervals (0 = none)
     ("seed", int, 0),
     # the classic hand-set blend (0.2 LightGBM / 0.8 LLM), reported beside the fitted one
     ("fixed_weights", dict[str, float], field(default_factory=lambda: {"lgbm": 0.2, "llm": 0.8})),
     # identical / empty answers predicted from the training rows' own frequencies (ensemble.core.degenerate)
     ("degenerate", DegenerateConfig, field(default_factory=DegenerateConfig))]
    + [(name, blender_class(name).Config, field(default_factory=blender_class(name).Config)) for name in BLENDERS
       if dataclasses.fields(blender_class(name).Config)],  # a blender without settings has no subsection
    namespace={"constraints": {"method": Choice(*BLENDERS), "bootstrap": Range(0)},
               "__doc__": "The blend params section (see the module docstring)."},
)
BlendConfig.__module__ = __name__
