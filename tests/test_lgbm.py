from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.data import read_battles, swap_ab, unswap_proba
from ensemble.core.folds import make_folds
from ensemble.core.metrics import log_loss, prior_proba
from ensemble.models import load
from ensemble.models.lgbm.model import LGBMModel
from ensemble.pipeline.oof import run_oof

FAST = {"n_estimators": 40, "learning_rate": 0.1, "early_stopping_rounds": 20, "n_jobs": 1,
        "vectorizer": {"max_features": 300, "min_df": 2}}


def test_swap_symmetry_and_save_load(shared_data, tmp_path):
    frame = read_battles(shared_data / "pandalm_999.csv")
    train, test = frame.iloc[:500].reset_index(drop=True), frame.iloc[500:620].reset_index(drop=True)
    model = LGBMModel(FAST).fit(train, test)
    p = model.predict_proba(test)
    assert p.shape == (120, 3) and np.allclose(p.sum(axis=1), 1)
    # swap TTA makes the model exactly position-unbiased
    np.testing.assert_allclose(model.predict_proba(swap_ab(test)), unswap_proba(p), atol=1e-12)
    model.save(tmp_path / "m")
    np.testing.assert_allclose(load(tmp_path / "m").predict_proba(test), p, atol=1e-12)
    # without TTA the raw model is not symmetric: the test above could fail
    raw = LGBMModel({**FAST, "swap_tta": False, "swap_augment": False}).fit(train, test)
    assert not np.allclose(raw.predict_proba(swap_ab(test)), unswap_proba(raw.predict_proba(test)), atol=1e-6)


def test_oof_beats_prior_and_resumes(shared_data, tmp_path, capsys):
    frame = read_battles(shared_data / "pandalm_999.csv")
    folds = make_folds(frame, 3, seed=0)
    run_oof("lgbm", FAST, frame, folds, tmp_path, test=frame.iloc[:50])
    oof = pd.read_parquet(tmp_path / "oof" / "lgbm.parquet")
    assert list(oof["id"]) == list(frame["id"]) and oof["fold"].nunique() == 3
    y = frame["label"].to_numpy()
    p = oof[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    assert log_loss(y, p) < log_loss(y, prior_proba(y, len(y))) - 0.03
    test = pd.read_parquet(tmp_path / "test" / "lgbm.parquet")
    assert len(test) == 50 and np.allclose(test.iloc[:, 1:].sum(axis=1), 1)
    # a crash after fold 0: the rerun reuses it; a changed config retrains everything
    (tmp_path / "models" / "lgbm" / "fold_2" / "done.json").unlink()
    capsys.readouterr()
    run_oof("lgbm", FAST, frame, folds, tmp_path)
    out = capsys.readouterr().err
    assert "fold 0: already done" in out and "fold 2: training" in out
    run_oof("lgbm", {**FAST, "num_leaves": 7}, frame, folds, tmp_path)
    assert "already done" not in capsys.readouterr().err


def test_counted_once_matrices_match_featurizing_from_scratch(shared_data):
    """fit_transform counts and the swapped matrix built by reordering count blocks must equal
    counting the (swapped) texts again; the fast path may not change a single feature."""
    frame = read_battles(shared_data / "pandalm_999.csv").iloc[:200].reset_index(drop=True)
    model = LGBMModel(FAST)
    counts = model._fit_vectorizers(frame)
    for fitted, fresh in zip(counts, model._counts(frame)):
        assert (fitted != fresh).nnz == 0
    x, x_swapped = model._matrices(frame, True, counts)
    again, _ = model._matrices(swap_ab(frame), False)
    assert x.shape == again.shape and (x_swapped != again).nnz == 0
    assert (x != x_swapped).nnz > 0  # the swap does change the matrix


def test_lgbm_learns_a_planted_marker_through_run_oof(tmp_path):
    """The winner's response carries 'zebra' (a tie: both or neither), lengths random: only the
    counted tokens tell. Through run_oof on 3 prompt-grouped folds, scored on the held-out rows."""
    from conftest import marker_frame, oof_log_loss

    words = "the cat sat on a mat while quick brown foxes jump over lazy dogs and we write code".split()
    frame = marker_frame(240, words, "zebra")
    oof, prior = oof_log_loss("lgbm",
                              {**FAST, "min_child_samples": 5, "vectorizer": {"max_features": 300, "min_df": 1}},
                              frame, tmp_path)
    assert oof <= 0.5 * prior, f"lgbm OOF log loss {oof:.4f} vs prior {prior:.4f}"


def test_saved_fold_is_byte_identical_across_processes(tmp_path):
    """DVC hashes the fold folders: a rerun on the same machine must write the same bytes, whatever
    the process's string-hash seed (CountVectorizer pickles set-ordered state and a memory address)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import battle_frame; "
            "from ensemble.models.lgbm import LGBMModel; "
            "LGBMModel({'n_estimators': 20}).fit(battle_frame(200)).save(sys.argv[1])")
    digests = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=Path(__file__).resolve().parents[1],
                       env={**os.environ, "PYTHONHASHSEED": seed}, timeout=300)
        digests.append({f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in sorted(out.iterdir())})
    assert digests[0] == digests[1]


def test_lgbm_swap_mappings_have_negative_controls(monkeypatch):
    """The swap TTA's un-swapping and the augmentation's label mapping each matter: with the real
    mapping the model is exactly A/B symmetric and learns the marker from swap-augmented rows; with
    the mapping broken (identity) the symmetry is gone, and the twins teach the opposite of their
    battles, so A and B wins can no longer be told apart."""
    from conftest import marker_frame

    import ensemble.core.targets as targets
    import ensemble.models.lgbm.model as lgbm_module

    words = "the cat sat on a mat while quick brown foxes jump over lazy dogs and we write code".split()
    train, test = marker_frame(160, words, "zebra", seed=0), marker_frame(80, words, "zebra", seed=1)
    config = {**FAST, "n_estimators": 30, "early_stopping_rounds": 0, "min_child_samples": 5, "n_jobs": 1,
              "vectorizer": {"max_features": 100, "min_df": 1}}
    model = LGBMModel(config).fit(train)

    def symmetric() -> bool:
        return np.allclose(model.predict_proba(swap_ab(test)), unswap_proba(model.predict_proba(test)),
                           atol=1e-12, rtol=0)

    assert symmetric()
    with monkeypatch.context() as mp:
        mp.setattr(lgbm_module, "unswap_proba", lambda proba: proba)
        assert not symmetric()

    decisive = test["label"].to_numpy() < 2

    def a_vs_b_accuracy() -> float:  # swap_tta off: what the augmented training taught, nothing averaged
        p = LGBMModel({**config, "swap_tta": False}).fit(train).predict_proba(test)[decisive]
        return float((p[:, :2].argmax(axis=1) == test["label"].to_numpy()[decisive]).mean())

    assert a_vs_b_accuracy() >= 0.95
    monkeypatch.setattr(targets, "SWAP_INDEX", [0, 1, 2])  # the training twins' labels (swap_targets)
    assert a_vs_b_accuracy() <= 0.75
