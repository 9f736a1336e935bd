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


def test_marker_frame_pairs_share_a_prompt_and_its_folds_never_split_a_pair(monkeypatch):
    """The learning tests' frame repeats each prompt in two battles (2i, 2i+1), so prompt-grouped
    folds are really exercised: the folds must keep every pair together."""
    from conftest import WORDS, marker_frame

    import ensemble.core.folds as folds_module

    frame = marker_frame(240, WORDS, "python")
    prompts = frame["prompt"].map(lambda turns: turns[0]).to_numpy()
    assert (prompts[0::2] == prompts[1::2]).all()  # the same text exactly, not only the same key
    groups = prompt_groups(frame)
    assert len(np.unique(groups)) == len(frame) // 2 and (groups[0::2] == groups[1::2]).all()
    fold = attach_folds(frame, make_folds(frame, 3, seed=0))
    assert (fold[0::2] == fold[1::2]).all()
    # the check can fail: folds that ignore the prompts (one group per row) do split pairs
    monkeypatch.setattr(folds_module, "prompt_groups", lambda f: np.arange(len(f)))
    ungrouped = attach_folds(frame, folds_module.make_folds(frame, 3, seed=0))
    assert (ungrouped[0::2] != ungrouped[1::2]).any()
