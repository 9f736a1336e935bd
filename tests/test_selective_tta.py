"""Swap TTA on a share of the battles (`swap_tta_share`): the least certain after a single pass get the model's
two-pass prediction, the rest keep the single pass; the share is a run-time key (not the model)."""

import numpy as np
from conftest import battle_frame

from ensemble.core.position import single_pass
from ensemble.models import create

LGBM = {"n_estimators": 20, "early_stopping_rounds": 0, "n_jobs": 1, "swap_augment": False,
        "vectorizer": {"max_features": 40, "min_df": 1}}


def test_selective_tta_swaps_only_the_least_certain_share():
    """Breaks if the rows are not the least certain ones, if they do not get the two-pass prediction, if the
    others do not keep the single pass, or if share 1 / share 0 are not full TTA / no TTA."""
    train, test = battle_frame(120, seed=2), battle_frame(40, seed=5)
    model = create("lgbm", LGBM).fit(train)  # no swap augmentation: the two passes differ
    full = model.predict_proba(test)
    with single_pass(model):
        single = model.predict_proba(test)
    assert not np.allclose(full, single)
    model.config.swap_tta_share = 0.25
    part = model.predict_proba(test)
    rows = np.sort(np.argsort(single.max(axis=1), kind="stable")[:10])
    np.testing.assert_allclose(part[rows], full[rows], atol=1e-12)
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
