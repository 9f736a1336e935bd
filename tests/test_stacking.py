import json

import numpy as np
import pandas as pd
import pytest

from ensemble.blend.run import BlendConfig, fit_blend, load_blender
from ensemble.blend.bootstrap import paired_diff_ci
from ensemble.core.metrics import row_log_loss
from ensemble.core.config import ConfigError, from_dict
from ensemble.core.data import DataError
from ensemble.core.metrics import log_loss
from ensemble.blend.stack import StackConfig, fit_stacker
from ensemble.blend.crossfit import crossfit


def battles(n: int, seed: int = 0):
    """Battles whose label follows the length difference; one model sees nothing of it."""
    rng = np.random.default_rng(seed)
    la, lb = rng.integers(5, 400, n), rng.integers(5, 400, n)
    d = np.log1p(la) - np.log1p(lb)
    logits = np.column_stack([2.5 * d, -2.5 * d, np.full(n, 0.3)])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=q) for q in p])
    frame = pd.DataFrame({"id": np.arange(n).astype(str), "prompt": [[f"q{i // 4}"] for i in range(n)],
                          "response_a": [["x" * k] for k in la], "response_b": [["y" * k] for k in lb]})
    return frame, labels


def test_stacker_uses_meta_features_where_weights_cannot():
    frame, labels = battles(2400)
    prior = np.tile(np.bincount(labels, minlength=3) / len(labels), (len(labels), 1))
    blind = np.clip(prior + np.random.default_rng(1).normal(0, 0.02, prior.shape), 0.01, None)
    blind /= blind.sum(1, keepdims=True)
    fold_of = (np.arange(len(labels)) // 4) % 5  # prompt-grouped folds
    cfg = StackConfig()
    stack = crossfit(lambda p, y, f: fit_stacker(p, y, f, ["blind"], cfg), [blind], labels, fold_of, frame)
    weights = crossfit(lambda p, y, f: fit_blend(p, y, ["blind"]), [blind], labels, fold_of, frame)
    assert log_loss(labels, stack) < log_loss(labels, weights) - 0.1  # held-out rows: not true by construction
    no_meta = StackConfig(meta_features=False)
    plain = crossfit(lambda p, y, f: fit_stacker(p, y, f, ["blind"], no_meta), [blind], labels, fold_of, frame)
    assert log_loss(labels, plain) > log_loss(labels, stack) + 0.1


def test_stacker_round_trips_through_json_and_picks_c_by_inner_cv():
    frame, labels = battles(600, seed=2)
    rng = np.random.default_rng(3)
    probas = [rng.dirichlet(np.ones(3), len(labels)) for _ in range(2)]
    stacker = fit_stacker(probas, labels, frame, ["m0", "m1"], StackConfig(c_grid=[0.01, 1.0]))
    assert set(stacker.inner_log_loss) == {"0.01", "1.0"}
    assert stacker.c == float(min(stacker.inner_log_loss, key=stacker.inner_log_loss.get))
    saved = json.loads(json.dumps(stacker.to_json()))
    again = load_blender(saved, "blend.json")
    np.testing.assert_allclose(again.apply(probas, frame), stacker.apply(probas, frame), atol=1e-12)
    p = stacker.apply(probas, frame)
    assert p.shape == (600, 3) and np.allclose(p.sum(1), 1) and (p > 0).all()


def test_bootstrap_interval_is_seeded_paired_and_grouped():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 900)
    good = rng.dirichlet(np.ones(3), 900) + 1.5 * np.eye(3)[labels]  # right more often than not
    good /= good.sum(1, keepdims=True)
    flat = np.full((900, 3), 1 / 3)
    groups = np.arange(900) // 9
    a, b = row_log_loss(labels, good), row_log_loss(labels, flat)
    assert np.isclose(a.mean(), log_loss(labels, good))
    lo, hi = paired_diff_ci(a, b, groups, 500, seed=1)
    assert lo <= a.mean() - b.mean() <= hi and hi < 0  # a real difference: the interval excludes 0
    assert paired_diff_ci(a, b, groups, 500, seed=1) == [lo, hi]  # reruns agree
    assert paired_diff_ci(a, a, groups, 100) == [0.0, 0.0]


@pytest.mark.parametrize("stack, message", [
    ({"c_grid": []}, "c_grid: [] is not allowed"),
    ({"c_grid": [0.1, -1]}, "c_grid: [0.1, -1] is not allowed"),
    ({"c_grid": ["big"]}, "numbers > 0"),
    ({"c_grid": 0.1}, "must be a list"),
    ({"inner_splits": 1}, "blend.stack.inner_splits: 1 is not allowed"),
    ({"meta_features": "yes"}, "blend.stack.meta_features: 'yes' (str) must be true or false"),
    ({"ridge": 1}, "unknown key(s) ridge"),
])
def test_bad_stack_params_are_one_line_config_errors(stack, message):
    with pytest.raises(ConfigError) as err:
        from_dict(BlendConfig, {"method": "stack", "stack": stack}, "blend")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("blend, message", [
    ({"method": "stacking"}, "blend.method: 'stacking' is not allowed; expected one of weights, stack"),
    ({"bootstrap": -5}, "blend.bootstrap: -5 is not allowed"),
])
def test_bad_blend_params(blend, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(BlendConfig, blend, "blend")


def test_saved_blend_with_unknown_method_is_refused():
    with pytest.raises(DataError, match="blend.json: method 'magic' is not one of weights, stack"):
        load_blender({"method": "magic", "models": ["m"]}, "blend.json")
    with pytest.raises(DataError, match="not a complete stack blend"):
        load_blender({"method": "stack", "models": ["m"]}, "blend.json")
