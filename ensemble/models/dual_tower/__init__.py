"""Dual-tower (Siamese) encoder: prompt+A and prompt+B through one shared encoder, compared by a head."""

from ensemble.models.dual_tower.model import DualTowerConfig, DualTowerModel

__all__ = ["DualTowerConfig", "DualTowerModel"]
