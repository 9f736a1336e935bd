"""Swap TTA on a share of the battles (`swap_tta_share`): the least certain after a single pass get the model's
two-pass prediction, the rest keep the single pass; the share is a run-time key (not the model)."""

import numpy as np
from conftest import battle_frame

from ensemble.core.data import swap_ab, unswap_proba
from ensemble.core.position import single_pass
from ensemble.models import create

LGBM = {"n_estimators": 20, "early_stopping_rounds": 0, "n_jobs": 1, "swap_augment": False,
        "vectorizer": {"max_features": 40, "min_df": 1}}


def test_selective_tta_swaps_only_the_least_certain_share():
    """Breaks if the rows are not the least certain ones, if they do not get the mean of both orders' single
    passes, if the others do not keep the single pass, or if share 1 / share 0 are not full TTA / no TTA."""
    train, test = battle_frame(120, seed=2), battle_frame(40, seed=5)
    model = create("lgbm", LGBM).fit(train)  # no swap augmentation: the two passes differ
    full = model.predict_proba(test)
    with single_pass(model):
        single = model.predict_proba(test)
    assert not np.allclose(full, single)
    with single_pass(model):
        swapped = unswap_proba(model.predict_proba(swap_ab(test)))
    model.config.swap_tta_share = 0.25
    part = model.predict_proba(test)
    rows = np.sort(np.argsort(single.max(axis=1), kind="stable")[:10])
    np.testing.assert_allclose(part[rows], 0.5 * (single[rows] + swapped[rows]), atol=1e-12)
    assert np.abs(part[rows] - full[rows]).max() < 0.05  # the model's own TTA averages before calibrating
    rest = np.setdiff1d(np.arange(40), rows)
    np.testing.assert_allclose(part[rest], single[rest], atol=1e-12)
    assert single[rows].max(axis=1).max() <= single[rest].max(axis=1).min()
    model.config.swap_tta_share = 1.0
    np.testing.assert_allclose(model.predict_proba(test), full)
    model.config.swap_tta_share = 0.0
    np.testing.assert_allclose(model.predict_proba(test), single)


def test_selective_tta_share_is_a_run_time_key_for_every_model():
    """The share changes inference, not what a fold learned: not in the fingerprint, so a submit may lower it
    without retraining. Breaks if a model forgets it in runtime_keys."""
    for name in ("lgbm", "dual_tower", "llm"):
        a, b = create(name, {}), create(name, {"swap_tta_share": 0.33})
        assert "swap_tta_share" in type(a).runtime_keys
        assert a.learned_config() == b.learned_config(), name
    assert create("lgbm", {}).learned_config() != create("lgbm", {"swap_tta": False}).learned_config()


def test_changing_the_share_reuses_the_folds_but_not_their_cached_predictions(tmp_path, capsys):
    """Breaks if the OOF runner's cached predictions are keyed by the fold fingerprint alone: a new share
    would then silently reuse the old predictions (the blend and the pipeline's submit would use them)."""
    import pandas as pd

    from ensemble.core.folds import make_folds
    from ensemble.pipeline.oof import run_oof

    train, test = battle_frame(90, seed=1), battle_frame(30, seed=6).drop(columns="label")
    test["id"] = "t" + test["id"]
    folds = make_folds(train, 3, seed=0)
    run_oof("lgbm", LGBM, train, folds, tmp_path, test=test)
    before = pd.read_parquet(tmp_path / "oof" / "lgbm.parquet")
    before_test = pd.read_parquet(tmp_path / "test" / "lgbm.parquet")
    capsys.readouterr()
    run_oof("lgbm", {**LGBM, "swap_tta_share": 0.0}, train, folds, tmp_path, test=test)
    assert capsys.readouterr().err.count("already done, reusing") == 3
    after = pd.read_parquet(tmp_path / "oof" / "lgbm.parquet")
    after_test = pd.read_parquet(tmp_path / "test" / "lgbm.parquet")
    cols = ["winner_model_a", "winner_model_b", "winner_tie"]
    assert not np.allclose(before[cols].to_numpy(), after[cols].to_numpy())
    assert not np.allclose(before_test[cols].to_numpy(), after_test[cols].to_numpy())
