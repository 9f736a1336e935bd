import numpy as np
import pandas as pd
import pytest

from ensemble.blend import apply_blend, fit_blend, fit_weights, run
from ensemble.data import DataError, save_battles
from ensemble.metrics import log_loss
from ensemble.oof import proba_frame


def synthetic_oof(n=4000, seed=0):
    """Labels drawn from a known mixture of three models' probabilities."""
    rng = np.random.default_rng(seed)
    models = [rng.dirichlet(np.ones(3) * a, size=n) for a in (0.5, 1.0, 2.0)]
    true_w = np.array([0.6, 0.3, 0.1])
    mix = np.tensordot(true_w, np.stack(models), axes=1)
    labels = np.array([rng.choice(3, p=p) for p in mix])
    return models, labels, true_w


def test_recovers_known_weights():
    models, labels, true_w = synthetic_oof()
    w = fit_weights(models, labels)
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
    assert np.abs(w - true_w).max() < 0.06


def test_never_worse_than_best_single_model():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 2000)
    good = np.eye(3)[labels] * 0.5 + 0.5 * rng.dirichlet(np.ones(3), 2000)
    noise = rng.dirichlet(np.ones(3), 2000)
    blend = fit_blend([noise, good], labels, ["noise", "good"])
    best = min(log_loss(labels, good), log_loss(labels, noise))
    assert log_loss(labels, blend.apply([noise, good])) <= best + 1e-9
    assert blend.weights[1] > 0.9


def test_single_model_and_temperature():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 3000)
    logits = np.eye(3)[labels] * 1.0 + rng.normal(size=(3000, 3))
    over = np.exp(logits * 3) / np.exp(logits * 3).sum(1, keepdims=True)  # overconfident
    blend = fit_blend([over], labels, ["m"], temperature=True)
    assert blend.weights.tolist() == [1.0]
    assert blend.temperature > 1.5  # softened
    assert log_loss(labels, blend.apply([over])) < log_loss(labels, over)
    assert np.allclose(apply_blend([over], np.ones(1), 1.0).sum(axis=1), 1)


def test_run_writes_metrics_and_checks_alignment(tmp_path):
    models, labels, _ = synthetic_oof(600)
    ids = [f"r{i}" for i in range(600)]
    frame = pd.DataFrame({"id": ids, "prompt": [["p"]] * 600, "response_a": [["a"]] * 600,
                          "response_b": [["b"]] * 600, "label": labels})
    save_battles(tmp_path / "prepared" / "train.parquet", frame)
    order = np.random.default_rng(0).permutation(600)  # OOF rows in another order: aligned by id
    for name, p in zip(["m0", "m1", "m2"], models):
        (tmp_path / "oof").mkdir(exist_ok=True)
        proba_frame(np.array(ids)[order], p[order], np.zeros(600, int)).to_parquet(tmp_path / "oof" / f"{name}.parquet")
    params = {"blend": {"models": ["m0", "m1", "m2"], "fixed_weights": {"m0": 0.2, "m2": 0.8}}}
    metrics = run(params, tmp_path)
    assert set(metrics["models"]) == {"m0", "m1", "m2"}
    assert metrics["blend"]["log_loss"] <= min(m["log_loss"] for m in metrics["models"].values()) + 1e-9
    assert "log_loss" in metrics["fixed_blend"]
    assert (tmp_path / "blend.json").exists() and (tmp_path / "metrics.json").exists()
    assert set(metrics["blend"]["winner_tie"]) == {"precision", "recall", "f1", "support"}
    pd.read_parquet(tmp_path / "oof" / "m1.parquet").iloc[:-1].to_parquet(tmp_path / "oof" / "m1.parquet")
    with pytest.raises(DataError, match="m1.parquet: no OOF rows for 1 training ids"):
        run(params, tmp_path)
    with pytest.raises(DataError, match="no OOF file for model 'zz'"):
        run(params, tmp_path, ["zz"])
