"""Degenerate battles (identical answers, one empty answer): recognised, predicted from the training rows'
own frequencies, oriented by side, chosen per kind on the blender's rows, cross-fitted, saved and counted."""

import numpy as np
import pandas as pd

from ensemble.blend import create_blender
from ensemble.blend.config import BlendConfig
from ensemble.blend.crossfit import crossfit
from ensemble.core.config import from_dict
from ensemble.core.degenerate import A_EMPTY, B_EMPTY, IDENTICAL, NONE, DegenerateRule, kinds
from ensemble.core.metrics import log_loss


def degenerate_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Normal battles (labels at random), identical answers (mostly ties) and one empty answer (the other
    side mostly wins), half of them with A empty and half with B empty."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        kind = i % 4
        a, b = f"answer {i} a", f"answer {i} b"
        if kind == 1:
            b, label = a, (2 if rng.random() < 0.8 else int(rng.integers(0, 2)))
        elif kind == 2:  # A empty: B wins
            a, label = "  ", (1 if rng.random() < 0.9 else 2)
        elif kind == 3:  # B empty: A wins
            b, label = "", (0 if rng.random() < 0.9 else 2)
        else:
            label = int(rng.integers(0, 3))
        rows.append({"id": str(i), "prompt": [f"question {i}"], "response_a": [a], "response_b": [b]})
        labels.append(label)
    return pd.DataFrame(rows), np.array(labels)


def test_kinds_identical_empty_and_normal():
    frame = pd.DataFrame({"response_a": [["x"], [" y "], ["", " "], [""], ["z"], ["p", "q"]],
                          "response_b": [["w"], ["y"], [""], ["v"], ["\n"], ["p", "r"]]})
    assert kinds(frame).tolist() == [NONE, IDENTICAL, IDENTICAL, A_EMPTY, B_EMPTY, NONE]


def test_rule_follows_the_training_frequencies_oriented_by_side():
    """Breaks if the empty side's orientation is lost (A empty must favour B), the identical kind is not A/B
    symmetric, or the prior weight is not applied."""
    frame, labels = degenerate_frame()
    rule = DegenerateRule.fit(frame, labels, prior_weight=3.0)
    assert rule.rows == {"identical": 75, "one_empty": 150}
    assert rule.identical[0] == rule.identical[1] and rule.identical[2] > 0.6
    nonempty, empty, tie = rule.one_empty
    assert nonempty > 0.8 and empty < 0.05
    out = rule.apply(np.full((len(frame), 3), 1 / 3), frame)
    k = kinds(frame)
    assert (out[k == A_EMPTY, 1] > 0.8).all() and (out[k == B_EMPTY, 0] > 0.8).all()
    np.testing.assert_allclose(out[k == NONE], 1 / 3)
    # few battles of a kind: near the prior (shrinkage by prior_weight pseudo-battles)
    few = DegenerateRule.fit(frame.iloc[:8], labels[:8], prior_weight=3.0)
    assert abs(few.identical[2] - rule.identical[2]) > 0.05
    assert DegenerateRule.from_json(rule.to_json()) == rule


def test_auto_mode_uses_the_rule_only_where_it_beats_the_blend_and_crossfit_scores_it():
    """Models that know nothing (uniform): the rule wins on both kinds, and the cross-fitted blend improves on
    those rows. Models that already know the answer: the rule is not used. Breaks if auto always or never
    applies the rule, or if the rule is fitted on the held-out fold: the held-out fold's own labels, flipped on
    its degenerate rows, must not move its cross-fitted predictions (they do move the other folds')."""
    frame, labels = degenerate_frame()
    k = kinds(frame)
    rows = k != NONE
    blind = [np.full((len(frame), 3), 1 / 3)]
    fold_of = np.arange(len(frame)) % 5
    cfg = from_dict(BlendConfig, {"models": ["m"]}, "blend")
    off = from_dict(BlendConfig, {"models": ["m"], "degenerate": {"mode": "off"}}, "blend")
    fitted = create_blender("weights", ["m"], cfg).fit(blind, labels, frame)
    assert fitted.degenerate_.use == {"identical": True, "one_empty": True}
    with_rule = crossfit(lambda: create_blender("weights", ["m"], cfg), blind, labels, fold_of, frame)
    without = crossfit(lambda: create_blender("weights", ["m"], off), blind, labels, fold_of, frame)
    assert log_loss(labels[rows], with_rule[rows]) < log_loss(labels[rows], without[rows]) - 0.3
    np.testing.assert_allclose(with_rule[~rows], without[~rows])
    # leakage: fold 0's identical battles become A wins, its empty ones the empty side's wins
    held_out = fold_of == 0
    flipped = labels.copy()
    flipped[held_out & (k == IDENTICAL)] = 0
    flipped[held_out & (k == A_EMPTY)] = 0
    flipped[held_out & (k == B_EMPTY)] = 1
    assert (flipped != labels).sum() > 40
    again = crossfit(lambda: create_blender("weights", ["m"], cfg), blind, flipped, fold_of, frame)
    np.testing.assert_array_equal(again[held_out], with_rule[held_out])
    moved = np.abs(again[~held_out & rows] - with_rule[~held_out & rows]).max()
    assert moved > 0.05  # control: the flipped labels do reach the rule fitted for every other fold
    # an oracle-ish model: 0.95 on the true class; the rule (0.8-0.9) would lose, so it is not used
    sharp = [np.where(np.eye(3)[labels] > 0, 0.95, 0.025)]
    assert create_blender("weights", ["m"], cfg).fit(sharp, labels, frame).degenerate_.use == {
        "identical": False, "one_empty": False}
    # the prior blender stays the plain class prior: the reference everything is compared with
    assert create_blender("prior", ["m"], cfg).fit(blind, labels, frame).degenerate_ is None


def test_blend_json_carries_the_rule_to_submit():
    from ensemble.blend import blender_from_json

    frame, labels = degenerate_frame()
    blind = [np.full((len(frame), 3), 1 / 3)]
    cfg = from_dict(BlendConfig, {"models": ["m"]}, "blend")
    fitted = create_blender("stack", ["m"], cfg).fit(blind, labels, frame.assign(fold=np.arange(len(frame)) % 5))
    again = blender_from_json(fitted.to_json())
    np.testing.assert_allclose(again.predict(blind, frame), fitted.predict(blind, frame))
    assert again.degenerate_ == fitted.degenerate_
