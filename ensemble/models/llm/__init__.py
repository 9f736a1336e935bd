"""QLoRA decoder classifier: one prompt+A+B sequence per battle, linear probe, LoRA, calibration."""

from ensemble.models.llm.model import LLMConfig, LLMModel

__all__ = ["LLMConfig", "LLMModel"]
