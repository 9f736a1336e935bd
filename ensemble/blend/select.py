"""The blend that chooses its own method, honestly: among `candidates` (the class prior, the best single
model, weights, greedy, the stacker, ...), listed simplest first, it cross-fits each on the rows it is
fitted on (inner folds: the rows' own OOF folds) and takes the simplest one whose log loss is within
one standard error of the lowest (Breiman's one-standard-error rule; the error of the per-prompt mean
difference to the lowest), then refits that one on all of them.

Cross-fitted in turn (ensemble.blend.crossfit), the choice is nested: for each held-out fold the
candidates compete on the other folds only, so the reported score includes the choice. On a few
rows, where four fitted numbers beat nothing, this is what falls back to the prior."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble.blend.base import Blender
from ensemble.blend.crossfit import crossfit
from ensemble.core.config import Each, Range
from ensemble.core.folds import prompt_groups
from ensemble.core.metrics import row_log_loss


@dataclass
class SelectConfig:
    # simplest first. Chosen on the development parts of the real data sets (`python bench/bench_real.py
    # candidates`): adding best / weights / greedy lost up to 0.018 against the best model there (their per-fold
    # choices flip between near-equals); over 11 runs [prior, stack] was never above the prior, 0.011 below
    # the best model on average and +0.003 above it at worst (docs/results.md)
    candidates: list[str] = field(default_factory=lambda: ["prior", "stack"])
    inner_splits: int = 5  # prompt-grouped inner folds when the rows carry fewer than 2 OOF folds

    constraints: ClassVar[dict] = {"inner_splits": Range(2), "candidates": Each(min_len=1)}

    def problems(self):
        from ensemble.blend import BLENDERS

        for name in self.candidates:
            if name not in BLENDERS or name == "select":
                yield "candidates", (f"{name!r} is not a blender to choose from; known: "
                                     f"{', '.join(b for b in BLENDERS if b != 'select')}")


def one_se_choice(losses: dict[str, np.ndarray], groups: np.ndarray) -> str:
    """The first (simplest) candidate whose mean row loss is within one standard error of the lowest;
    the error is the prompt-clustered one of that same mean row difference (rows of a prompt are not
    independent): sqrt(G / (G - 1) * sum over prompts of (their summed centred differences)^2) / n."""
    best = min(losses, key=lambda n: losses[n].mean())
    g = np.unique(groups, return_inverse=True)[1]
    n_groups = int(g.max()) + 1 if len(g) else 0
    for name, loss in losses.items():
        diff = loss - losses[best]
        sums = np.bincount(g, weights=diff - diff.mean(), minlength=n_groups)  # per prompt
        se = np.sqrt(n_groups / (n_groups - 1) * (sums ** 2).sum()) / len(diff) if n_groups > 1 else 0.0
        if diff.mean() <= se:
            return name
    return best


class SelectBlender(Blender):
    name = "select"
    Config = SelectConfig
    about = "chooses among blend.select.candidates (default: prior, stack) by an inner cross-fit, one-SE rule"

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        from ensemble.blend import create_blender

        folds = frame["fold"].to_numpy() if "fold" in frame else np.zeros(len(labels))
        if len(np.unique(folds)) < 2:  # rows without OOF folds (a library call): prompt-grouped inner folds
            from sklearn.model_selection import GroupKFold

            groups = prompt_groups(frame)
            k = min(self.config.inner_splits, len(np.unique(groups)))
            folds = np.zeros(len(labels), dtype=np.int64)
            for j, (_, va) in enumerate(GroupKFold(n_splits=k).split(labels, labels, groups)):
                folds[va] = j
        losses = {}
        for name in self.config.candidates:
            oof = crossfit(lambda name=name: create_blender(name, self.models, self.blend), probas, labels, folds,
                           frame)
            losses[name] = row_log_loss(labels, oof)
        self.scores = {name: round(float(v.mean()), 6) for name, v in losses.items()}
        self.chosen = create_blender(one_se_choice(losses, prompt_groups(frame)), self.models,
                                     self.blend).fit(probas, labels, frame)

    def _predict(self, probas, frame) -> np.ndarray:
        return self.chosen.predict(probas, frame)

    def model_weights(self) -> dict[str, float] | None:
        return self.chosen.model_weights()

    def summary(self) -> dict:
        return {"chosen": self.chosen.name, **self.chosen.summary(), "inner_crossfit_log_loss": self.scores}

    def _state(self) -> dict:
        return {"chosen": self.chosen.to_json(), "inner_crossfit_log_loss": self.scores}

    def _set_state(self, state: dict) -> None:
        from ensemble.blend import blender_from_json

        self.chosen = blender_from_json(state["chosen"])
        self.scores = dict(state.get("inner_crossfit_log_loss", {}))
