import json

import numpy as np
import pandas as pd
import pytest

from ensemble.blend.run import apply_blend, fit_blend, fit_weights, main, run
from ensemble.core.cli import fail_cleanly
from ensemble.core.data import DataError, save_battles
from ensemble.core.metrics import log_loss
from ensemble.core.predictions import proba_frame
from ensemble.blend.crossfit import crossfit


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


def two_views(n=3000, seed=3):
    """Two models that each see a different half of the signal: blending them clearly helps."""
    rng = np.random.default_rng(seed)
    s1, s2 = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    logits = 1.2 * (s1 + s2)
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in true])
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)
    groups = np.arange(n) // 3  # three battles per prompt
    return [soft(1.2 * s1), soft(1.2 * s2)], labels, groups


def crossfit_weights(probas, labels, fold_of):
    frame = pd.DataFrame({"id": np.arange(len(labels)).astype(str)})
    return crossfit(lambda p, y, f: fit_blend(p, y, ["m0", "m1"]), probas, labels, fold_of, frame)


def test_crossfit_blend_beats_each_view_when_blending_helps():
    probas, labels, groups = two_views()
    fold_of = groups % 5
    cf = crossfit_weights(probas, labels, fold_of)
    best = min(log_loss(labels, p) for p in probas)
    assert log_loss(labels, cf) < best - 0.05  # scored on rows no fit saw, so not true by construction


def test_useless_model_gets_near_zero_weight_and_crossfit_does_not_flatter():
    rng = np.random.default_rng(4)
    z = 1.5 * rng.normal(size=(3000, 3))
    good = np.exp(z) / np.exp(z).sum(1, keepdims=True)  # calibrated: the labels are drawn from it
    labels = np.array([rng.choice(3, p=p) for p in good])
    useless = good[rng.permutation(3000)]  # same spread of probabilities, no information
    blend = fit_blend([useless, good], labels, ["useless", "good"])
    assert blend.weights[0] < 0.03
    cf = crossfit_weights([useless, good], labels, np.arange(3000) // 3 % 5)
    # the honest score is no better than the in-sample one, and close to the useful model alone
    assert log_loss(labels, cf) >= log_loss(labels, blend.apply([useless, good])) - 1e-9
    assert abs(log_loss(labels, cf) - log_loss(labels, good)) < 0.01


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
        proba_frame(np.array(ids)[order], p[order], (np.arange(600) % 3)[order]).to_parquet(
            tmp_path / "oof" / f"{name}.parquet")
        (tmp_path / "test").mkdir(exist_ok=True)  # models from elsewhere: their test predictions too
        proba_frame(["t0", "t1"], p[:2]).to_parquet(tmp_path / "test" / f"{name}.parquet")
    params = {"blend": {"models": ["m0", "m1", "m2"], "fixed_weights": {"m0": 0.2, "m2": 0.8}, "bootstrap": 200}}
    metrics = run(params, tmp_path, metrics_path=tmp_path / "headline.json")
    assert set(metrics["models"]) == {"m0", "m1", "m2"}
    b = metrics["blend"]
    assert b["crossfit"]["log_loss"] >= b["log_loss"] - 0.01  # the in-sample score is the optimistic one
    lo, hi = b["diff_vs_best_ci"]
    assert lo <= hi and set(b["crossfit_by_method"]) == {"weights", "stack"}
    head = json.loads((tmp_path / "headline.json").read_text())
    assert head["blend"]["log_loss_crossfit"] == b["crossfit"]["log_loss"] and "winner_tie" not in head["blend"]
    assert run(params, tmp_path, metrics_path=tmp_path / "again.json") and \
        (tmp_path / "again.json").read_text() == (tmp_path / "headline.json").read_text()  # seeded: reruns agree
    assert "log_loss" in metrics["fixed_blend"]
    assert (tmp_path / "blend.json").exists() and (tmp_path / "metrics.json").exists()
    assert set(metrics["blend"]["winner_tie"]) == {"precision", "recall", "f1", "support"}
    pd.read_parquet(tmp_path / "oof" / "m1.parquet").iloc[:-1].to_parquet(tmp_path / "oof" / "m1.parquet")
    with pytest.raises(DataError, match="m1.parquet: no OOF rows for 1 training ids"):
        run(params, tmp_path)
    with pytest.raises(DataError, match="no prediction file for model 'zz'"):
        run(params, tmp_path, ["zz"])


def test_method_override_and_bad_method(tmp_path, capsys):
    models, labels, _ = synthetic_oof(300)
    ids = [f"r{i}" for i in range(300)]
    frame = pd.DataFrame({"id": ids, "prompt": [[f"p{i % 100}"] for i in range(300)], "response_a": [["a"]] * 300,
                          "response_b": [["bb"]] * 300, "label": labels})
    save_battles(tmp_path / "prepared" / "train.parquet", frame)
    (tmp_path / "oof").mkdir()
    for name, p in zip(["m0", "m1"], models):
        proba_frame(ids, p, np.arange(300) % 3).to_parquet(tmp_path / "oof" / f"{name}.parquet")
        (tmp_path / "test").mkdir(exist_ok=True)
        proba_frame(["t0"], p[:1]).to_parquet(tmp_path / "test" / f"{name}.parquet")
    (tmp_path / "params.yaml").write_text("blend:\n  models: [m0, m1]\n  bootstrap: 0\n")
    argv = ["--params", str(tmp_path / "params.yaml"), "--artifacts", str(tmp_path),
            "--metrics", str(tmp_path / "m.json")]
    assert fail_cleanly(lambda: main(argv + ["--method", "stack"])) == 0
    assert json.loads((tmp_path / "blend.json").read_text())["method"] == "stack"
    assert "blend stack, crossfit" in capsys.readouterr().out
    assert fail_cleanly(lambda: main(argv + ["--method", "stak"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--method 'stak'" in err and "weights, stack" in err
