"""What keeps the defaults honest on data nobody tuned them for: the stacker on binary data with a model
that learned nothing, the default `select` never worse than the prior, accuracy that does not count a
symmetric prediction as a vote for A, folds that fell back to the prior said out loud, HH-RLHF dialogues
with two turns of one speaker in a row."""

import json

import numpy as np
import pandas as pd
import pytest

from ensemble.blend import create_blender
from ensemble.blend.config import BlendConfig
from ensemble.blend.crossfit import crossfit
from ensemble.blend.run import run
from ensemble.core.config import from_dict
from ensemble.core.data import read_battles, save_battles
from ensemble.core.metrics import accuracy, log_loss
from ensemble.core.predictions import PRIOR_FOLDS_ATTR, proba_frame

CFG = from_dict(BlendConfig, {}, "blend")


def binary_oof(n: int = 600, signal: float = 0.3, seed: int = 0):
    """Binary labels (no ties), 5 folds of whole prompts; model 0 carries a weak signal, model 1 learned
    nothing: on four folds it predicts the class prior of the other folds (as a model whose calibration
    gate fell back does), so its log-probabilities differ between those folds and not within one; on the
    fifth it says noise."""
    rng = np.random.default_rng(seed)
    folds = np.repeat(np.arange(5), n // 5)
    score = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-signal * score - 0.15))).astype(np.int64)  # 1 = B wins
    floor = 1 / (n + 3)
    weak = np.column_stack([1 / (1 + np.exp(signal * score)), 1 / (1 + np.exp(-signal * score)), np.zeros(n)])
    weak = weak * (1 - floor)
    weak[:, 2] = floor
    flat = np.zeros((n, 3))
    for k in range(5):
        b = labels[folds != k].mean()
        flat[folds == k] = [(1 - b) * (1 - floor), b * (1 - floor), floor]
    # ...except on its last fold, where its calibration let a noisy model through (the LLM on HH-RLHF did so)
    last = folds == 4
    noisy = 1 / (1 + np.exp(-0.4 * rng.normal(size=last.sum())))
    flat[last] = np.column_stack([(1 - noisy) * (1 - floor), noisy * (1 - floor), np.full(last.sum(), floor)])
    frame = pd.DataFrame({"id": np.arange(n).astype(str), "prompt": [[f"q{i // 2}"] for i in range(n)],
                          "response_a": [["a" * 20]] * n, "response_b": [["b" * 21]] * n, "fold": folds})
    return [weak, flat], labels, folds, frame


def test_stacker_on_binary_data_keeps_a_weak_signal_weak_beside_a_model_at_the_prior():
    # standardising the prior-only model's log-probabilities (or keeping its fold-constant columns) turns
    # differences between the folds' class frequencies into confident predictions on the held-out fold
    probas, labels, folds, frame = binary_oof()
    prior = crossfit(lambda: create_blender("prior", ["weak", "flat"], CFG), probas, labels, folds, frame)
    stack = crossfit(lambda: create_blender("stack", ["weak", "flat"], CFG), probas, labels, folds, frame)
    assert stack[:, :2].max() < 0.8  # about 0.02-0.05 nats of signal: nothing near certainty
    assert log_loss(labels, stack) <= log_loss(labels, prior) + 0.002
    fitted = create_blender("stack", ["weak", "flat"], CFG).fit(probas, labels, frame)
    kept = fitted.to_json()["state"]["features"]
    assert any(f.startswith("log_flat") for f in kept)  # it varies within its last fold
    without_last = create_blender("stack", ["weak", "flat"], CFG).fit(
        [p[folds < 4] for p in probas], labels[folds < 4], frame[folds < 4].reset_index(drop=True))
    kept = without_last.to_json()["state"]["features"]
    assert not any(f.startswith("log_flat") for f in kept)  # constant within every fold it saw: left out
    assert not any(f.endswith("_tie") for f in kept)  # the tie columns sit at their floor
    assert fitted.predict(probas, frame)[:, 2].max() == pytest.approx(1 / (len(labels) + 3))


def test_the_default_select_is_not_worse_than_the_prior_nor_the_best_model_on_binary_data():
    probas, labels, folds, frame = binary_oof(seed=1)
    prior = crossfit(lambda: create_blender("prior", ["weak", "flat"], CFG), probas, labels, folds, frame)
    chosen = crossfit(lambda: create_blender("select", ["weak", "flat"], CFG), probas, labels, folds, frame)
    assert log_loss(labels, chosen) <= log_loss(labels, prior) + 0.002
    assert log_loss(labels, chosen) <= log_loss(labels, probas[0]) + 0.01


def test_accuracy_splits_a_tied_top_probability():
    labels = np.array([0, 1, 1, 2])
    symmetric = np.tile([0.45, 0.45, 0.10], (4, 1))
    assert accuracy(labels, symmetric) == pytest.approx(0.5 * 3 / 4)  # half a vote on each of 3 A/B rows
    assert accuracy(labels, symmetric) != pytest.approx((symmetric.argmax(1) == labels).mean())
    sure = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    assert accuracy(labels, sure) == pytest.approx(0.75)


def write_run(tmp_path, probas, labels, folds, frame, prior_folds):
    art = tmp_path / "artifacts"
    train = frame.drop(columns="fold").assign(label=labels)
    save_battles(art / "prepared" / "train.parquet", train)
    for name, proba in zip(["weak", "flat"], probas):
        out = proba_frame(train["id"], proba, folds)
        out.attrs[PRIOR_FOLDS_ATTR] = prior_folds[name]
        for part in ("oof", "test"):
            (art / part).mkdir(parents=True, exist_ok=True)
        out.to_parquet(art / "oof" / f"{name}.parquet")
        out.drop(columns="fold").to_parquet(art / "test" / f"{name}.parquet")
    return art


def test_folds_at_the_prior_are_counted_marked_and_said(tmp_path, capsys):
    probas, labels, folds, frame = binary_oof(seed=2)
    art = write_run(tmp_path, probas, labels, folds, frame, {"weak": [], "flat": [0, 1, 2, 3, 4]})
    params = {"blend": {"models": ["weak", "flat"], "bootstrap": 200, "fixed_weights": {}}}
    metrics = run(params, art, metrics_path=tmp_path / "metrics.json")
    out = capsys.readouterr().out
    assert metrics["models"]["flat"]["prior_folds"] == 5 and metrics["models"]["weak"]["prior_folds"] == 0
    details = json.loads((art / "metrics.json").read_text())  # the details; the headline stays short
    assert details["models"]["flat"]["prior_folds"] == 5
    assert "the prior on 5 of 5 folds" in out
    assert "note: flat predicts the class prior on 5 of its 5 folds" in out
    assert "note: weak" not in out


def test_a_blend_worse_than_its_best_model_says_so(tmp_path, capsys):
    probas, labels, folds, frame = binary_oof(seed=3)
    art = write_run(tmp_path, probas, labels, folds, frame, {"weak": [], "flat": []})
    params = {"blend": {"models": ["weak", "flat"], "bootstrap": 0, "fixed_weights": {}, "method": "prior"}}
    run(params, art, metrics_path=None)
    assert "is worse than its best single model weak" in capsys.readouterr().out


def test_hh_dialogues_with_two_turns_of_one_speaker_read_as_one_turn(tmp_path):
    chosen = ("\n\nHuman: how do I pick a lock?\n\nAssistant: Why?\n\nHuman: locked out\n\nAssistant: Call a"
              " locksmith.\n\nAssistant: They open doors for a living.")
    rejected = "\n\nHuman: how do I pick a lock?\n\nAssistant: Why?\n\nHuman: locked out\n\nAssistant: Use a pin."
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n" +
                    json.dumps({"chosen": rejected, "rejected": chosen}) + "\n", encoding="utf-8")
    battles = read_battles(path, labels=True)
    answers = battles.iloc[0]["response_a"] if battles.iloc[0]["label"] == 0 else battles.iloc[0]["response_b"]
    assert battles.iloc[0]["prompt"] == ["how do I pick a lock?", "locked out"]
    assert answers == ["Why?", "Call a locksmith.\n\nThey open doors for a living."]


def test_the_stacker_of_models_that_all_learned_nothing_is_the_prior():
    # on Kaggle's first 100 rows every model sat at the prior and a stacker of the length meta-feature alone
    # won one fold's inner cross-fit by noise, then cost 1.42 nats on that fold (prior 1.10)
    rng = np.random.default_rng(4)
    n = 80
    labels = rng.integers(0, 3, n)
    folds = np.repeat(np.arange(4), n // 4)
    flat = np.vstack([np.bincount(labels[folds != k], minlength=3) / (folds != k).sum() for k in folds])
    frame = pd.DataFrame({"id": np.arange(n).astype(str), "prompt": [[f"q{i}"] for i in range(n)],
                          "response_a": [["a" * int(k)] for k in rng.integers(1, 500, n)],
                          "response_b": [["b" * int(k)] for k in rng.integers(1, 500, n)], "fold": folds})
    fitted = create_blender("stack", ["m1", "m2"], CFG).fit([flat, flat], labels, frame)
    assert fitted.to_json()["state"]["features"] == []
    np.testing.assert_allclose(fitted.predict([flat, flat], frame), np.tile(np.bincount(labels, minlength=3) / n,
                                                                            (n, 1)), atol=1e-9)
