"""What every registered model (ensemble/models/registry.yaml) must do, each built tiny from a config (no hub
access): plain-string cells read as one-turn lists, and the fold's `valid` rows choose nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from conftest import battle_frame, tiny_config

from ensemble.core.data import TEXT_COLUMNS
from ensemble.models import REGISTRY, create

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: per registered model, its tiny CPU config from the session's fixtures (the tiny DeBERTa, the tiny Llama)
TINY: dict[str, Callable[[pytest.FixtureRequest], dict]] = {
    # inner early stopping (the default) on: the held-out share is the training rows' own
    "lgbm": lambda request: {"n_estimators": 40, "early_stopping_rounds": 5, "min_child_samples": 3, "n_jobs": 1,
                             "vectorizer": {"max_features": 100, "min_df": 1}},
    # calib_frac 0: too few rows to calibrate on, which would leave the class prior on every row. An evaluation
    # every step (on held-out training rows: none here) and learning rates high enough for a bumpy loss: a loop
    # that evaluated on `valid` would keep an earlier step than the last
    "dual_tower": lambda request: {"backbone": request.getfixturevalue("tiny_backbone"), "max_len": 48,
                                   "device": "cpu", "head_lr": 5e-2, "freeze_layers": 0, "use_features": False,
                                   "calib_frac": 0.0,
                                   "train": {"max_steps": 4, "eval_every": 1, "batch_size": 8, "lr": 1e-2,
                                             "warmup_ratio": 0.0, "precision": "fp32"}},
    "llm": lambda request: tiny_config(request.getfixturevalue("tiny_llm"), quantization="none", lora_layers=1),
}


def tiny(name: str, request: pytest.FixtureRequest) -> dict:
    assert name in TINY, f"{name}: a registered model without a tiny config here (add one to TINY)"
    return TINY[name](request)


def battles(n: int, seed: int) -> pd.DataFrame:
    """Multi-word answers (a model that split a plain string into characters would see other tokens)."""
    return battle_frame(n, seed).assign(id=lambda f: f"s{seed}-" + f["id"])


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The same battles with every one-turn list cell as its plain string."""
    return frame.assign(**{col: [cell[0] for cell in frame[col]] for col in TEXT_COLUMNS})


def varies(p: np.ndarray) -> bool:
    """Not the class prior on every row: an equality of two such predictions says something."""
    return not np.allclose(p, p[0])


@pytest.mark.parametrize("name", list(REGISTRY))
def test_plain_string_cells_give_the_same_model_as_one_turn_lists(name, request):
    """Fitted on plain strings or on one-turn lists, a model is the same model, and it predicts plain strings
    as their one-turn lists. Breaks if a model reads a plain string's characters as turns."""
    train, test = battles(48, 0), battles(12, 1)
    assert isinstance(train["response_a"][0], list) and len(train["response_a"][0]) == 1
    lists = create(name, tiny(name, request)).fit(train, None)
    strings = create(name, tiny(name, request)).fit(plain(train), None)
    expected = lists.predict_proba(test)
    assert varies(expected), expected
    np.testing.assert_allclose(strings.predict_proba(test), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(lists.predict_proba(plain(test)), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_valid_rows_choose_nothing(name, request):
    """fit(train, valid) and fit(train, None) give the same model: the same predictions on the valid rows
    (the fold's OOF rows, which score the model and so must not pick anything in it)."""
    train, valid = battles(48, 0), battles(16, 2)
    shown = create(name, tiny(name, request)).fit(train, valid)
    blind = create(name, tiny(name, request)).fit(train, None)
    expected = blind.predict_proba(valid)
    assert varies(expected), expected
    np.testing.assert_allclose(shown.predict_proba(valid), expected, rtol=0, atol=1e-9)
