"""LightGBM's early stopping looks at the training part only: the fold's valid (OOF) rows choose nothing."""

import numpy as np
import pandas as pd
import pytest
from conftest import battle_frame

from ensemble.core.config import ConfigError
from ensemble.models import create

SMALL = {"n_estimators": 200, "early_stopping_rounds": 10, "n_jobs": 1, "vectorizer": {"max_features": 50, "min_df": 1}}


@pytest.mark.parametrize("folds", [3, 0, "auto"])
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
    ({"early_stopping_folds": "some"}, "lgbm.early_stopping_folds: 'some' is not allowed; expected one of auto, 0"),
])
def test_bad_early_stopping_params(section, message):
    with pytest.raises(ConfigError) as err:
        create("lgbm", section)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_auto_uses_inner_folds_on_few_prompts_and_one_share_on_many(monkeypatch):
    import ensemble.models.lgbm.model as lgbm

    frame = battle_frame(240, seed=1)
    model = create("lgbm", {**SMALL, "early_stopping_folds": "auto"})
    assert model._inner_plan(frame)[0] == "folds"  # 80 prompts
    monkeypatch.setattr(lgbm, "AUTO_HOLDOUT_PROMPTS", 50)
    plan = model._inner_plan(frame)
    assert plan[0] == "holdout" and len(plan[1]) + len(plan[2]) == len(frame)


def test_a_fit_that_learns_nothing_predicts_the_prior():
    """Labels independent of the texts: on held-out training prompts the boosted model does not beat the
    prior, so the calibration hands its predictions to the prior (decided on training rows only)."""
    frame = battle_frame(300, seed=2)
    frame["label"] = np.random.default_rng(5).integers(0, 3, len(frame))
    model = create("lgbm", {**SMALL, "min_child_samples": 2}).fit(frame.iloc[:240].reset_index(drop=True))
    assert model.calibration.shrink == 1.0
    p = model.predict_proba(frame.iloc[240:])
    np.testing.assert_allclose(p, np.tile(model.calibration.prior, (60, 1)), atol=1e-9)
    informed = create("lgbm", SMALL).fit(battle_frame(300, seed=2).iloc[:240].reset_index(drop=True))
    assert informed.calibration.shrink < 0.5  # the planted length signal: kept


@pytest.mark.parametrize("folds", [3, 0])
def test_pseudo_rows_train_the_inner_fits_but_never_choose_the_rounds(folds):
    """Pseudo-labelled rows (copies of a third of the battles, so some ask held-out prompts): the plan
    holds out labelled rows only (with inner folds, every labelled row once), and a pseudo row asking a
    held-out prompt is in no fit part; an all-False pseudo column gives the plain plan (control)."""
    from ensemble.core.targets import PSEUDO_COLUMN

    frame = battle_frame(240, seed=1)
    model = create("lgbm", {**SMALL, "early_stopping_folds": folds})

    def splits(train: pd.DataFrame) -> list:
        plan = model._inner_plan(train)
        return plan[1] if plan[0] == "folds" else [(plan[1], plan[2])]

    for (a, b), (x, y) in zip(splits(frame), splits(frame.assign(**{PSEUDO_COLUMN: False})), strict=True):
        np.testing.assert_array_equal(a, x)
        np.testing.assert_array_equal(b, y)
    extra = frame.iloc[::3].assign(**{PSEUDO_COLUMN: True, "id": lambda f: "p" + f["id"]})
    both = pd.concat([frame.assign(**{PSEUDO_COLUMN: False}), extra], ignore_index=True)
    inner = splits(both)
    pseudo, prompts = both[PSEUDO_COLUMN].to_numpy(), both["prompt"].str[0].to_numpy()
    held = np.concatenate([b for _, b in inner])
    assert not pseudo[held].any()
    if folds:
        np.testing.assert_array_equal(np.sort(held), np.flatnonzero(~pseudo))
    for fit, out in inner:
        asks_held = np.isin(prompts, prompts[out])
        np.testing.assert_array_equal(fit, np.flatnonzero(~asks_held))
        assert (asks_held & pseudo).any()  # some pseudo rows ask a held-out prompt: none of them fit
