"""A fourth base model that lives in the test folder: the smallest thing that speaks the interface
(ensemble.models.base.BaseModel). tests/test_new_model.py registers it and runs it through the whole
pipeline without editing any other file."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ensemble.core.config import Range
from ensemble.core.io import write_json
from ensemble.models.base import BaseModel, FoldBudget


@dataclass
class ToyConfig(FoldBudget):
    bins: int = 5  # quantile bins of the log-length difference A - B
    smoothing: float = 1.0  # add-k counts per bin and class

    constraints: ClassVar[dict] = {"bins": Range(1), "smoothing": Range(0, low_open=True)}


def length_diff(frame) -> np.ndarray:
    chars = {c: np.array([sum(len(t) for t in turns) for turns in frame[c]], float)
             for c in ("response_a", "response_b")}
    return np.log1p(chars["response_a"]) - np.log1p(chars["response_b"])


class ToyModel(BaseModel):
    """Class frequencies per quantile bin of the length difference: learns "the longer answer wins"."""

    name = "toy"
    Config = ToyConfig
    fitted_attr = "table"
    table = None

    def _fit(self, train, valid) -> None:
        d = length_diff(train)
        self.edges = np.quantile(d, np.linspace(0, 1, self.config.bins + 1)[1:-1]).tolist()
        which = np.searchsorted(self.edges, d)
        counts = np.full((self.config.bins, 3), self.config.smoothing)
        np.add.at(counts, (which, train["label"].to_numpy()), 1)
        self.table = (counts / counts.sum(axis=1, keepdims=True)).tolist()

    def _predict_proba(self, frame) -> np.ndarray:
        return np.asarray(self.table)[np.searchsorted(self.edges, length_diff(frame))]

    def _save_state(self, path) -> None:
        write_json(path / "table.json", {"edges": self.edges, "table": self.table})

    def _load_state(self, path) -> None:
        import json

        state = json.loads((path / "table.json").read_text())
        self.edges, self.table = state["edges"], state["table"]
