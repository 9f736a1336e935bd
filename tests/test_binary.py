"""Binary preference data (no ties, as in most preference sets outside the arena): every model trains on
it through run_oof, predicts P(tie) exactly at the add-one floor 1 / (n_train + 3) of its fold and still
beats the class prior on the held-out rows; the blend stage runs on those OOF files with every blender
and the bootstrap; a training frame of one class is a one-line DataError."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import CORPUS, marker_frame, tiny_config

from ensemble.core.data import DataError, save_battles
from ensemble.core.folds import attach_folds, make_folds
from ensemble.core.metrics import log_loss, prior_proba
from ensemble.pipeline.oof import run_oof

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROBA = ["winner_model_a", "winner_model_b", "winner_tie"]
MARKER = "alpha"  # two tokens for the tiny Llama's BPE, word pieces for the tiny DeBERTa, a word for LightGBM
N_SPLITS = 2


def binary_marker_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """marker_frame (pairs of battles share a prompt) with its ties mapped away: a tie battle (the marker in
    both responses or in neither) gets a winner by a coin and the marker in the winner's response only."""
    frame = marker_frame(n, sorted(set(" ".join(CORPUS[:2]).split())), MARKER, seed)
    rng = np.random.default_rng(seed + 1)
    for i in np.flatnonzero(frame["label"].to_numpy() == 2):
        winner = int(rng.integers(0, 2))
        a, b = ([w for w in frame.at[i, c][0].split() if w != MARKER] for c in ("response_a", "response_b"))
        text = (a, b)[winner]
        text.insert(int(rng.integers(0, len(text) + 1)), MARKER)
        frame.at[i, "response_a"], frame.at[i, "response_b"] = [" ".join(a)], [" ".join(b)]
        frame.at[i, "label"] = winner
    return frame


def configs(tiny_backbone: str, tiny_llm: str) -> dict[str, dict]:
    """The learning tests' configs (test_lgbm, test_dual_tower fine-tuned, test_llm), shortened; calib_frac
    0.4 so the 80 training rows of a fold hold out the 30 calibration rows a calibration needs."""
    return {
        "lgbm": {"n_estimators": 60, "learning_rate": 0.1, "early_stopping_rounds": 20, "min_child_samples": 5,
                 "n_jobs": 1, "vectorizer": {"max_features": 300, "min_df": 1}},
        "dual_tower": {"backbone": tiny_backbone, "max_len": 48, "device": "cpu", "use_features": False,
                       "freeze_layers": 0, "head_lr": 1e-2, "infer_max_tokens": 2048, "calib_frac": 0.4,
                       "train": {"epochs": 5, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0,
                                 "precision": "fp32", "patience": 0, "seed": 0}},
        # the real LLM path: 4-bit, LoRA on the top layer from cached frozen states, linear probe,
        # fine-tuning on swapped twins, calibration, swap TTA; cache_max_gib: a budget it fits
        "llm": tiny_config(tiny_llm, max_len=128, lora_layers=1, calib_frac=0.4, infer_max_tokens=1024,
                           infer_max_rows=32, cache_max_gib=0.5,
                           train={"epochs": 2, "batch_size": 8, "lr": 5e-3, "seed": 0}),
    }


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, tiny_backbone, tiny_llm):
    """Every registered model trained through run_oof on one binary marker frame, 2 prompt-grouped folds."""
    art = tmp_path_factory.mktemp("binary") / "artifacts"
    frame = binary_marker_frame(160)
    folds = make_folds(frame, N_SPLITS, seed=0)
    save_battles(art / "prepared" / "train.parquet", frame)
    folds.to_parquet(art / "folds.parquet", index=False)
    for name, config in configs(tiny_backbone, tiny_llm).items():
        run_oof(name, config, frame, folds, art)
    return art, frame, attach_folds(frame, folds)


def test_binary_marker_frame_has_no_ties_and_keeps_the_signal():
    frame = binary_marker_frame(160)
    labels = frame["label"].to_numpy()
    assert set(labels) == {0, 1} and min(np.bincount(labels)) > 50
    has = lambda col: frame[col].map(lambda t: MARKER in t[0].split()).to_numpy()  # noqa: E731
    assert (has("response_a") == (labels == 0)).all() and (has("response_b") == (labels == 1)).all()
    prompts = frame["prompt"].map(lambda t: t[0]).to_numpy()
    assert (prompts[0::2] == prompts[1::2]).all()


@pytest.mark.parametrize("name", ["lgbm", "dual_tower", "llm"])
def test_each_model_floors_ties_per_fold_and_beats_the_prior_on_held_out_rows(binary_run, name):
    import json

    art, frame, fold_of = binary_run
    oof = pd.read_parquet(art / "oof" / f"{name}.parquet").set_index("id").loc[frame["id"], PROBA].to_numpy()
    labels = frame["label"].to_numpy()
    for k in range(N_SPLITS):
        va, n_train = fold_of == k, int((fold_of != k).sum())
        meta = json.loads((art / "models" / name / f"fold_{k}" / "model.json").read_text())
        assert meta["classes"] == [0, 1] and meta["train_rows"] == n_train
        if name != "lgbm":  # the transformers calibrated on held-out training prompts, not the prior
            state = json.loads((art / "models" / name / f"fold_{k}" / "state.json").read_text())
            assert state["calibration"]["rows"] >= 30 and state["calibration"]["shrink"] < 1.0, state["calibration"]
        assert (oof[va, 2] == 1.0 / (n_train + 3)).all(), (k, oof[va, 2][:3], 1.0 / (n_train + 3))
        np.testing.assert_allclose(oof[va].sum(axis=1), 1.0, atol=1e-9)
        loss, prior = log_loss(labels[va], oof[va]), log_loss(labels[va], prior_proba(labels[~va], int(va.sum())))
        assert loss <= 0.5 * prior, f"{name} fold {k}: held-out log loss {loss:.4f} vs the class prior {prior:.4f}"


def test_blend_stage_runs_every_blender_on_binary_oof_files(binary_run, tmp_path):
    import shutil

    from ensemble import TARGETS
    from ensemble.blend import BLENDERS
    from ensemble.blend.run import run

    art = tmp_path / "artifacts"
    shutil.copytree(binary_run[0], art)
    labels = binary_run[1]["label"].to_numpy()
    models = ["lgbm", "dual_tower", "llm"]
    # the stacker fitted on every row (what submit applies), every blender cross-fitted; the stacker's
    # and the selection's inner CVs shortened (near-separable OOF: each logistic fit runs long)
    params = {"blend": {"models": models, "method": "stack", "bootstrap": 50,
                        "stack": {"c_grid": [0.1, 1.0], "inner_splits": 2}, "select": {"inner_splits": 2}}}
    metrics = run(params, art, metrics_path=tmp_path / "metrics.json")
    by_method = metrics["blend"]["by_method"]
    assert set(by_method) == set(BLENDERS)
    assert all(np.isfinite(v["log_loss"]) for v in by_method.values()), by_method
    assert metrics["prior"]["class_counts"][2] == 0 and metrics["blender"]["method"] == "stack"
    lo, hi = metrics["blend"]["diff_vs_prior_ci"]  # the bootstrap ran: an interval, the blend far better
    assert lo <= hi < 0
    blend = pd.read_parquet(art / "blend_oof.parquet")[list(TARGETS)].to_numpy()
    assert np.isfinite(blend).all() and np.allclose(blend.sum(axis=1), 1.0)
    assert blend[:, 2].max() < 0.05 and log_loss(labels, blend) < 0.3


@pytest.mark.parametrize("name", ["lgbm", "dual_tower", "llm"])
def test_a_single_class_training_frame_is_a_one_line_data_error(name, tiny_backbone, tiny_llm):
    from ensemble.models import create

    frame = binary_marker_frame(40)
    single = frame[frame["label"] == 0].reset_index(drop=True)
    with pytest.raises(DataError, match=rf"{name}: the training rows hold a single class \(A wins \d+, B wins 0, "
                                        r"tie 0\); a preference model needs at least two") as err:
        create(name, configs(tiny_backbone, tiny_llm)[name]).fit(single)
    assert "\n" not in str(err.value)


def test_run_oof_refuses_a_single_class_fold_before_writing_any(tmp_path):
    """A fold whose training rows are all one class (here: every B win sits in fold 1) is refused."""
    frame = binary_marker_frame(40)
    folds = pd.DataFrame({"id": frame["id"], "fold": (frame["label"] == 1).astype(int)})
    with pytest.raises(DataError, match="lgbm: the training rows hold a single class") as err:
        run_oof("lgbm", {"n_estimators": 5, "n_jobs": 1}, frame, folds, tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "oof").exists()


def test_a_swap_augmented_model_trained_without_b_wins_stays_symmetric():
    from conftest import battle_frame

    from ensemble.core.data import swap_ab, unswap_proba
    from ensemble.models.lgbm.model import LGBMModel

    frame = battle_frame(120, seed=2)
    train = frame[frame["label"] != 1].reset_index(drop=True)  # A wins and ties only: the twins are B wins
    model = LGBMModel({"n_estimators": 15, "early_stopping_rounds": 0, "n_jobs": 1, "min_child_samples": 5,
                       "vectorizer": {"max_features": 50, "min_df": 1}}).fit(train)
    assert model.classes_ == [0, 1, 2]  # the swapped twins of the A wins are B wins
    test = train.iloc[:10]
    raw = model._predict_proba(test)  # what the swap-averaged booster says: exactly symmetric
    np.testing.assert_allclose(model._predict_proba(swap_ab(test)), unswap_proba(raw), atol=1e-12)
    np.testing.assert_allclose(model.predict_proba(swap_ab(test)), unswap_proba(model.predict_proba(test)), atol=1e-12)
