"""Degenerate battles: two identical answers, or one empty answer. Their outcome is a matter of counting,
not of reading: the share of ties among identical answers and the share of wins of the non-empty side are
properties of the data set (of how its raters treat such pairs), so they are predicted from the training
rows' own frequencies for such battles instead of from a model's guess (LMSYS 4th place hard-coded
numbers; here they come from the data).

    kinds(frame) -> (n,)         NONE / IDENTICAL / A_EMPTY / B_EMPTY per battle
    DegenerateRule.fit(frame, labels) -> rule;  rule.apply(proba, frame) -> proba with those rows replaced

For each kind the rule predicts (counts + w * prior) / (n + w): the kind's label counts in the training
rows, shrunk toward the class prior by `w` pseudo-battles (`blend.degenerate.prior_weight`), so a kind
seen in three battles stays near the prior and one seen in three hundred follows its own counts. With
`mode: auto` (the default) a kind is predicted by the rule only where it beats the blend on the blender's
own rows by more than its fitting optimism: models that read the answers often know already that an
empty one loses (PandaLM: the blend's 0.41 on its 29 one-empty battles against the rule's 0.54).
Identical answers are A/B symmetric (P(A) = P(B)); an empty A is an empty B swapped, so the two are
counted together, oriented as "the non-empty side wins / the empty side wins / tie".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from ensemble.core.calibration import class_prior
from ensemble.core.config import Choice, Range
from ensemble.core.data import as_turns
from ensemble.core.metrics import log_loss

NONE, IDENTICAL, A_EMPTY, B_EMPTY = 0, 1, 2, 3
#: the two kinds the rule predicts (A_EMPTY and B_EMPTY are one kind, "one_empty", oriented)
KIND_NAMES = ("identical", "one_empty")


@dataclass
class DegenerateConfig:
    # auto: per kind, the rule replaces the blend only where it beats it on the blender's own rows by more
    # than the optimism of fitting it (2/n nats) | on: always | off: never
    mode: str = "auto"
    prior_weight: float = 3.0  # pseudo-battles of the class prior added to each kind's counts

    constraints: ClassVar[dict] = {"mode": Choice("auto", "on", "off"), "prior_weight": Range(0.0, low_open=True)}


def _text(cell) -> str:
    return "\n".join(t.strip() for t in as_turns(cell)).strip()


#: a frame column holding kinds() already (the blend stage adds it once: every blender of every fold and
#: inner fold then reads it instead of joining the texts again)
KIND_COLUMN = "degenerate_kind"


def kinds(frame: pd.DataFrame) -> np.ndarray:
    """(n,) int: IDENTICAL when A and B are the same text after stripping (two empty answers included),
    A_EMPTY / B_EMPTY when one side is empty in every turn, else NONE."""
    if KIND_COLUMN in frame:
        return frame[KIND_COLUMN].to_numpy(dtype=np.int64)
    a = [_text(c) for c in frame["response_a"].tolist()]
    b = [_text(c) for c in frame["response_b"].tolist()]
    out = np.full(len(a), NONE, dtype=np.int64)
    for i, (x, y) in enumerate(zip(a, b)):
        out[i] = IDENTICAL if x == y else A_EMPTY if not x else B_EMPTY if not y else NONE
    return out


def masks(k: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of each of KIND_NAMES, from kinds()."""
    return {"identical": k == IDENTICAL, "one_empty": (k == A_EMPTY) | (k == B_EMPTY)}


@dataclass
class DegenerateRule:
    """Fitted per-kind probabilities (JSON-ready: plain lists)."""

    identical: list[float]   # [P(A), P(B), P(tie)] for identical answers
    one_empty: list[float]   # [P(non-empty side wins), P(empty side wins), P(tie)]
    rows: dict[str, int]     # training battles of each kind the counts came from
    use: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(KIND_NAMES, True))  # kinds it predicts

    @classmethod
    def fit(cls, frame: pd.DataFrame, labels: np.ndarray, prior_weight: float = 3.0) -> DegenerateRule:
        labels = np.asarray(labels, dtype=np.int64)
        k = kinds(frame)
        prior = np.asarray(class_prior(labels, symmetric=True))
        c_same = np.bincount(labels[k == IDENTICAL], minlength=3).astype(float)
        c_same[:2] = c_same[:2].mean()  # symmetric: which side is called A says nothing
        # oriented: index 0 = the non-empty side wins (B for an empty A, A for an empty B)
        c_empty = (np.bincount(labels[k == B_EMPTY], minlength=3)
                   + np.bincount(labels[k == A_EMPTY], minlength=3)[[1, 0, 2]]).astype(float)

        def shrunk(c):
            return ((c + prior_weight * prior) / (c.sum() + prior_weight)).round(6).tolist()

        return cls(shrunk(c_same), shrunk(c_empty), {name: int(m.sum()) for name, m in masks(k).items()})

    def choose(self, proba: np.ndarray, labels: np.ndarray, frame: pd.DataFrame) -> DegenerateRule:
        """mode auto: keep a kind only where the rule's log loss on these (its own) rows, plus the 2/n nats
        that fitting its two free numbers is worth there, beats `proba`'s (the blend on the same rows)."""
        k, labels = kinds(frame), np.asarray(labels, dtype=np.int64)
        ruled = self.apply(proba, frame.assign(**{KIND_COLUMN: k}), every_kind=True)
        for name, rows in masks(k).items():
            n = int(rows.sum())
            self.use[name] = bool(n) and (log_loss(labels[rows], ruled[rows]) + 2.0 / n
                                          < log_loss(labels[rows], proba[rows]))
        return self

    def apply(self, proba: np.ndarray, frame: pd.DataFrame, every_kind: bool = False) -> np.ndarray:
        k = kinds(frame)
        out = np.array(proba, dtype=np.float64, copy=True)
        if every_kind or self.use["identical"]:
            out[k == IDENTICAL] = self.identical
        if every_kind or self.use["one_empty"]:
            out[k == B_EMPTY] = self.one_empty
            out[k == A_EMPTY] = np.asarray(self.one_empty)[[1, 0, 2]]
        return out

    def to_json(self) -> dict:
        return {"identical": self.identical, "one_empty": self.one_empty, "rows": self.rows, "use": self.use}

    @classmethod
    def from_json(cls, obj: dict) -> DegenerateRule:
        return cls([float(v) for v in obj["identical"]], [float(v) for v in obj["one_empty"]],
                   {k: int(v) for k, v in obj["rows"].items()}, {k: bool(v) for k, v in obj["use"].items()})
