import numpy as np
import pytest
from conftest import battle_frame

from ensemble.core.data import DataError, read_battles
from ensemble.core.folds import attach_folds, make_folds, prompt_groups


def test_prompt_grouped_no_leak(shared_data):
    frame = read_battles(shared_data / "pandalm_999.csv")
    folds = make_folds(frame, 5, seed=1)
    fold = attach_folds(frame, folds)
    groups = prompt_groups(frame)
    assert len(np.unique(groups)) < len(frame)  # the data does repeat prompts
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1  # a prompt never straddles folds
    sizes = np.bincount(fold)
    assert len(sizes) == 5 and sizes.min() > 0.6 * sizes.max()
    # stratified: every fold's label mix is near the global mix
    global_mix = np.bincount(frame["label"], minlength=3) / len(frame)
    for k in range(5):
        mix = np.bincount(frame["label"][fold == k], minlength=3) / (fold == k).sum()
        assert np.abs(mix - global_mix).max() < 0.1


def test_deterministic_and_checked():
    frame = battle_frame(60)
    a, b = make_folds(frame, 3, seed=7), make_folds(frame, 3, seed=7)
    assert a.equals(b)
    with pytest.raises(DataError, match="no fold"):
        attach_folds(frame.assign(id=frame["id"] + "x"), a)
    with pytest.raises(DataError, match="distinct prompts"):
        make_folds(frame.iloc[:4], 5)
