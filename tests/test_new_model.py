"""Adding a model is its package (here a module in the test folder), one registry line (here `register`), its
params section and its tests: the toy model goes through run_oof, the blend and submit without editing any
other file of the project."""

import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from ensemble.blend.run import run as run_blend
from ensemble.core.data import save_battles
from ensemble.core.folds import make_folds
from ensemble.models import REGISTRY, register
from ensemble.pipeline.oof import run_oof
from ensemble.pipeline.sections import check_params
from ensemble.pipeline.submit import make_submission

TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]


def length_battles(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    la, lb = rng.integers(5, 300, n), rng.integers(5, 300, n)
    d = np.log1p(la) - np.log1p(lb)
    labels = np.where(d > 0.4, 0, np.where(d < -0.4, 1, 2))
    flip = rng.random(n) < 0.15
    labels[flip] = rng.integers(0, 3, flip.sum())
    return pd.DataFrame({"id": [f"t{seed}-{i}" for i in range(n)], "prompt": [[f"prompt {i // 2}"] for i in range(n)],
                         "response_a": [["a" * k] for k in la], "response_b": [["b" * k] for k in lb], "label": labels})


@pytest.fixture
def toy_registered():
    register("toy", "toy_model:ToyModel")
    yield
    REGISTRY.pop("toy")


def test_new_model_runs_through_oof_blend_and_submit(toy_registered, tmp_path):
    art = tmp_path / "artifacts"
    train, test = length_battles(240, 0), length_battles(40, 1).drop(columns="label")
    save_battles(art / "prepared" / "train.parquet", train)
    save_battles(art / "prepared" / "test.parquet", test)
    folds = make_folds(train, 3, seed=0)
    folds.to_parquet(art / "folds.parquet")
    params = {"toy": {"bins": 6}, "blend": {"models": ["toy"], "bootstrap": 50}}
    check_params(params)  # its params section is checked like every model's
    run_oof("toy", params["toy"], train, folds, art, test=test)
    metrics = run_blend(params, art, metrics_path=tmp_path / "m.json")
    assert metrics["models"]["toy"]["log_loss"] < metrics["prior"]["log_loss"] - 0.1  # it learned on held-out rows
    sub = make_submission(test, art, params=params)
    cached = make_submission(test, art, reuse_cached=True, params=params)
    assert list(sub["id"]) == list(test["id"])
    np.testing.assert_allclose(sub[TARGETS].to_numpy(), cached[TARGETS].to_numpy(), atol=1e-12)
    again = run_oof("toy", params["toy"], train, folds, art, test=test)  # fingerprinted like any model: reused
    assert again["fit_seconds"] == {0: 0.0, 1: 0.0, 2: 0.0}


def test_the_toy_model_is_named_nowhere_else():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    naming = [f for f in files if (ROOT / f).is_file() and "ToyModel" in (ROOT / f).read_text(errors="ignore")]
    assert sorted(naming) == ["tests/test_new_model.py", "tests/toy_model.py"]
