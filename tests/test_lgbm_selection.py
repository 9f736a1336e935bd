"""LightGBM's early stopping looks at the training part only: the fold's valid (OOF) rows choose nothing."""

import numpy as np
import pytest
from conftest import battle_frame

from ensemble.core.config import ConfigError
from ensemble.models import create

SMALL = {"n_estimators": 200, "early_stopping_rounds": 10, "n_jobs": 1, "vectorizer": {"max_features": 50, "min_df": 1}}


@pytest.mark.parametrize("folds", [3, 0])
def test_inner_early_stopping_ignores_the_valid_rows(folds):
    frame = battle_frame(240, seed=1)
    rng = np.random.default_rng(0)  # label noise: boosting overfits, so early stopping has a round to find
    noisy = rng.random(len(frame)) < 0.4
    frame.loc[noisy, "label"] = rng.integers(0, 3, noisy.sum())
    train, valid = frame.iloc[:180].reset_index(drop=True), frame.iloc[180:].reset_index(drop=True)
    config = {**SMALL, "early_stopping_folds": folds}
    with_valid = create("lgbm", config).fit(train, valid)
    blind = create("lgbm", config).fit(train, None)
    np.testing.assert_allclose(with_valid.predict_proba(valid), blind.predict_proba(valid), atol=1e-12)
    assert 1 <= blind.booster.current_iteration() < 200  # it did stop early, on held-out training prompts
    # the old mode does look at them (kept to measure how much that flatters the OOF score)
    peeking = create("lgbm", {**config, "early_stopping": "valid"}).fit(train, valid)
    assert peeking.booster.best_iteration != blind.booster.current_iteration()


@pytest.mark.parametrize("section, message", [
    ({"early_stopping": "oof"}, "lgbm.early_stopping: 'oof' is not allowed; expected one of inner, valid"),
    ({"early_stopping_frac": 1.0}, "lgbm.early_stopping_frac: 1.0 is not allowed"),
    ({"early_stopping_folds": -1}, "lgbm.early_stopping_folds: -1 is not allowed"),
])
def test_bad_early_stopping_params(section, message):
    with pytest.raises(ConfigError) as err:
        create("lgbm", section)
    assert message in str(err.value) and "\n" not in str(err.value)
