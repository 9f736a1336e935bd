"""CountVectorizer + length-feature LightGBM."""

from ensemble.models.lgbm.model import LGBMConfig, LGBMModel

__all__ = ["LGBMConfig", "LGBMModel"]
