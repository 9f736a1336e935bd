"""Fold budgets (`<model>.folds`, `<model>.refit_full`): which folds a model trains and one more model
on every training row. Fingerprints (a fold is reused across budgets; the refit is its own identity),
resume, bad params, the blend on the rows every model covers, submit with either, and the refit
learning a planted signal on held-out rows. The toy model (tests/toy_model.py) keeps them fast."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT
from test_new_model import length_battles, toy_registered  # noqa: F401  (a fixture)

from ensemble.blend.run import crossfit_folds
from ensemble.blend.run import run as run_blend
from ensemble.core.config import ConfigError
from ensemble.core.data import DataError, save_battles
from ensemble.core.folds import make_folds, prompt_groups
from ensemble.core.metrics import log_loss, prior_proba
from ensemble.core.predictions import proba_frame
from ensemble.judge import Judge
from ensemble.models import load
from ensemble.models.base import REFIT_DIR
from ensemble.pipeline.bundle import _bundle
from ensemble.pipeline.oof import run_oof
from ensemble.pipeline.sections import check_params
from ensemble.pipeline.submit import fold_dirs, make_submission
from ensemble.report import load_inputs

TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]
N_SPLITS = 3
#: the blend stage cross-fits every blender; small grids keep that in seconds
FAST = {"bootstrap": 0, "stack": {"c_grid": [1.0], "inner_splits": 2}, "select": {"candidates": ["prior", "weights"]}}


@pytest.fixture
def toy(toy_registered):  # noqa: F811  (the imported fixture, requested)
    """The toy model registered (test_new_model's fixture: that file alone names its class)."""


@pytest.fixture
def project(tmp_path):
    """Prepared rows, test rows and 3 prompt-grouped folds under tmp_path/artifacts."""
    art = tmp_path / "artifacts"
    train, test = length_battles(240, 0), length_battles(60, 1).drop(columns="label")
    save_battles(art / "prepared" / "train.parquet", train)
    save_battles(art / "prepared" / "test.parquet", test)
    folds = make_folds(train, N_SPLITS, seed=0)
    folds.to_parquet(art / "folds.parquet")
    return art, train, test, folds


def oof_of(art, name: str = "toy") -> pd.DataFrame:
    return pd.read_parquet(art / "oof" / f"{name}.parquet")


def test_a_fold_is_reused_when_the_budget_shrinks_and_other_folds_are_nan(toy, project):
    art, train, test, folds = project
    run_oof("toy", {}, train, folds, art, test=test)
    full = oof_of(art)
    again = run_oof("toy", {"folds": [0]}, train, folds, art, test=test)
    assert again["trained"] == [0] and again["fit_seconds"] == {0: 0.0}  # fold 0 reused, nothing else trained
    part = oof_of(art)
    zero = part["fold"].to_numpy() == 0
    np.testing.assert_array_equal(part.loc[zero, TARGETS].to_numpy(), full.loc[zero, TARGETS].to_numpy())
    assert part.loc[~zero, TARGETS].isna().all().all() and part.loc[zero, TARGETS].notna().all().all()
    fold0 = np.load(art / "models" / "toy" / "fold_0" / "test_pred.npy")  # the test file: fold 0's alone
    np.testing.assert_allclose(pd.read_parquet(art / "test" / "toy.parquet")[TARGETS].to_numpy(), fold0)
    back = run_oof("toy", {"folds": "all"}, train, folds, art, test=test)  # and back: every fold reused
    assert back["fit_seconds"] == {0: 0.0, 1: 0.0, 2: 0.0}


def test_the_refit_is_reused_while_its_rows_match_and_retrained_when_they_change(toy, project, tmp_path):
    art, train, test, folds = project
    first = run_oof("toy", {"refit_full": True}, train, folds, art, test=test)
    assert first["fit_seconds"][REFIT_DIR] > 0
    refit = load(art / "models" / "toy" / REFIT_DIR)
    assert refit.n_train_ == len(train)  # fitted on every training row
    np.testing.assert_allclose(pd.read_parquet(art / "test" / "toy.parquet")[TARGETS].to_numpy(),
                               refit.predict_proba(test))  # the test file is the refit's, not the fold average
    assert run_oof("toy", {"refit_full": True}, train, folds, art, test=test)["fit_seconds"][REFIT_DIR] == 0.0
    # new folds: every fold retrains, the refit (every row, whichever folds) is reused
    reseeded = make_folds(train, N_SPLITS, seed=1)
    moved = run_oof("toy", {"refit_full": True}, train, reseeded, art, test=test)["fit_seconds"]
    assert moved[REFIT_DIR] == 0.0 and all(moved[k] > 0 for k in range(N_SPLITS))
    changed = train.assign(label=np.roll(train["label"].to_numpy(), 1))  # other training rows: retrained
    assert run_oof("toy", {"refit_full": True}, changed, reseeded, art, test=test)["fit_seconds"][REFIT_DIR] > 0
    # resume: a refit that never wrote done.json (a crash while saving) is trained again
    (art / "models" / "toy" / REFIT_DIR / "done.json").unlink()
    assert run_oof("toy", {"refit_full": True}, changed, reseeded, art, test=test)["fit_seconds"][REFIT_DIR] > 0


def test_the_refit_learns_a_planted_signal_on_held_out_rows(toy, project):
    art, train, test, folds = project
    run_oof("toy", {"refit_full": True, "folds": [0]}, train, folds, art, test=test)
    held_out = length_battles(300, 7)  # rows no model saw, the same planted rule (the longer answer wins)
    labels = held_out["label"].to_numpy()
    proba = load(art / "models" / "toy" / REFIT_DIR).predict_proba(held_out.drop(columns="label"))
    prior = log_loss(labels, prior_proba(train["label"].to_numpy(), len(labels)))
    assert log_loss(labels, proba) < prior - 0.4


@pytest.mark.parametrize("config, expected", [({"folds": []}, "toy.folds: [] is not allowed"),
                                              ({"folds": [0, 3]}, "names fold(s) [3] that do not exist"),
                                              ({"folds": "some"}, "toy.folds: 'some' is not allowed")])
def test_bad_folds_are_refused_before_any_fold_trains(toy, project, config, expected):
    art, train, test, folds = project
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        run_oof("toy", config, train, folds, art, test=test)
    assert not (art / "models" / "toy").exists()


def test_check_params_holds_folds_to_folds_n_splits():
    check_params({"folds": {"n_splits": 3}, "lgbm": {"folds": [2]}})
    with pytest.raises(ConfigError, match=r"params lgbm.folds: \[3\] names fold\(s\) \[3\]"):
        check_params({"folds": {"n_splits": 3}, "lgbm": {"folds": [3]}})
    with pytest.raises(ConfigError, match=r"params lgbm.folds: \[5\]"):  # the default folds.n_splits: 5
        check_params({"lgbm": {"folds": [5]}})


def stage_project(tmp_path, params: dict) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_folds(length_battles(60, 0), N_SPLITS, seed=0).to_parquet(tmp_path / "folds.parquet")


def one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_the_model_stage_refuses_a_missing_fold_in_one_line(tmp_path):
    stage_project(tmp_path, {"lgbm": {"folds": [0, 4]}})
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "oof.py"), "lgbm", "--folds", "folds.parquet",
                           "--train", "missing.parquet"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "lgbm.folds: [0, 4] names fold(s) [4] that do not exist; the run has 3 folds" in one_error(proc)


def test_refit_full_with_distillation_is_refused(toy, project):
    art, train, test, folds = project
    config = {"refit_full": True, "distill": {"teachers": ["dual_tower"]}}
    with pytest.raises(ConfigError, match="params lgbm.refit_full: true with lgbm.distill.teachers"):
        run_oof("lgbm", config, train, folds, art, test=test)
    assert not (art / "models" / "lgbm").exists()


def external_oof(art, train: pd.DataFrame, folds: pd.DataFrame, covered: list[int], name: str = "ext") -> None:
    """A model from elsewhere whose OOF covers `covered` folds only (NaN elsewhere), and its test file."""
    rng = np.random.default_rng(3)
    fold_of = folds.set_index("id").loc[train["id"], "fold"].to_numpy()
    proba = rng.dirichlet(np.ones(3), len(train))
    proba[~np.isin(fold_of, covered)] = np.nan
    proba_frame(train["id"], proba, fold_of).to_parquet(art / "oof" / f"{name}.parquet")
    test = pd.read_parquet(art / "prepared" / "test.parquet")
    proba_frame(test["id"], rng.dirichlet(np.ones(3), len(test))).to_parquet(art / "test" / f"{name}.parquet")


def test_the_blend_is_fitted_and_scored_on_the_rows_every_model_covers(toy, project, tmp_path):
    art, train, test, folds = project
    run_oof("toy", {}, train, folds, art, test=test)
    external_oof(art, train, folds, covered=[0, 2])
    params = {"blend": {"models": ["toy", "ext"], **FAST, "method": "weights"}}
    metrics = run_blend(params, art, metrics_path=tmp_path / "m.json")
    fold_of = folds["fold"].to_numpy()
    assert metrics["covered_rows"] == metrics["rows"] == int(np.isin(fold_of, [0, 2]).sum())
    assert metrics["training_rows"] == len(train) and metrics["crossfit_folds"] == "project folds"
    blended = pd.read_parquet(art / "blend_oof.parquet").set_index("id").loc[train["id"]]
    covered = np.isin(blended["fold"].to_numpy(), [0, 2])
    assert blended.loc[covered, TARGETS].notna().all().all() and blended.loc[~covered, TARGETS].isna().all().all()
    report = load_inputs(art / "prepared" / "train.parquet", art / "oof", art / "blend_oof.parquet",
                         art / "blend.json", art / "metrics.json", art / "models")
    assert len(report.ids) == metrics["covered_rows"]  # the report reads the covered rows too
    # the same blend on the covered rows alone (the uncovered rows dropped from every file) scores the same
    keep = train["id"][np.isin(folds.set_index("id").loc[train["id"], "fold"], [0, 2])]
    for name in ("toy", "ext"):
        frame = oof_of(art, name)
        frame[frame["id"].isin(keep)].to_parquet(art / "oof" / f"{name}.parquet")
    save_battles(art / "prepared" / "train.parquet", train[train["id"].isin(keep)])
    folds[folds["id"].isin(keep)].to_parquet(art / "folds.parquet")
    alone = run_blend(params, art, metrics_path=tmp_path / "m2.json")
    assert alone["blend"]["log_loss"] == pytest.approx(metrics["blend"]["log_loss"], abs=1e-9)


def test_one_covered_fold_is_cross_fitted_on_prompt_grouped_folds_within_it(toy, project, tmp_path):
    art, train, test, folds = project
    run_oof("toy", {"folds": [1]}, train, folds, art, test=test)
    metrics = run_blend({"blend": {"models": ["toy"], **FAST}}, art, metrics_path=tmp_path / "m.json")
    assert metrics["covered_rows"] == int((folds["fold"] == 1).sum())
    assert metrics["crossfit_folds"] == f"{N_SPLITS} prompt-grouped folds within project fold 1"
    assert any("covers one fold only" in line for line in metrics["advice"])  # its score is optimistic: said
    rows = train[(folds.set_index("id").loc[train["id"], "fold"] == 1).to_numpy()].reset_index(drop=True)
    rows.attrs["n_splits"] = N_SPLITS
    inner, _ = crossfit_folds(np.ones(len(rows), dtype=np.int64), rows, seed=0)
    groups = prompt_groups(rows)
    assert len(np.unique(inner)) == N_SPLITS
    assert all(len(np.unique(inner[groups == g])) == 1 for g in np.unique(groups))  # no prompt straddles two


def test_a_blend_whose_models_cover_no_common_rows_is_refused(toy, project, tmp_path):
    art, train, test, folds = project
    run_oof("toy", {"folds": [0]}, train, folds, art, test=test)
    external_oof(art, train, folds, covered=[1, 2])
    with pytest.raises(DataError, match=r"cover no common rows \(rows covered: toy \d+, ext \d+ of 240\)"):
        run_blend({"blend": {"models": ["toy", "ext"], **FAST}}, art, metrics_path=tmp_path / "m.json")


def test_refit_full_for_a_model_from_elsewhere_is_refused(toy, project, tmp_path):
    art, train, test, folds = project
    run_oof("toy", {}, train, folds, art, test=test)
    external_oof(art, train, folds, covered=[0, 1, 2])
    params = {"blend": {"models": ["toy", "ext"], **FAST}, "ext": {"refit_full": True}}
    with pytest.raises(ConfigError, match="params ext.refit_full: ext is a model from elsewhere"):
        run_blend(params, art, metrics_path=tmp_path / "m.json")
    assert not (art / "blend.json").exists()


def test_submit_averages_the_trained_folds_or_uses_the_refit(toy, project, tmp_path):
    art, train, test, folds = project
    params = {"toy": {"folds": [0, 2]}, "blend": {"models": ["toy"], **FAST, "method": "best"}}
    run_oof("toy", params["toy"], train, folds, art, test=test)
    run_blend(params, art, metrics_path=tmp_path / "m.json")
    dirs = fold_dirs(art, "toy", params)
    assert [d.name for d in dirs] == ["fold_0", "fold_2"]
    average = np.mean([load(d).predict_proba(test) for d in dirs], axis=0)
    sub = make_submission(test, art, params=params)
    np.testing.assert_allclose(sub[TARGETS].to_numpy(), average, atol=1e-12)
    cached = make_submission(test, art, reuse_cached=True, params=params)  # the OOF stage's test file agrees
    np.testing.assert_allclose(cached[TARGETS].to_numpy(), average, atol=1e-12)

    params["toy"]["refit_full"] = True
    with pytest.raises(DataError, match="full: missing or unfinished, the refit on every training row"):
        make_submission(test, art, params=params)  # refit_full asked, not run yet
    run_oof("toy", params["toy"], train, folds, art, test=test)
    assert [d.name for d in fold_dirs(art, "toy", params)] == [REFIT_DIR]
    refit = load(art / "models" / "toy" / REFIT_DIR).predict_proba(test)
    np.testing.assert_allclose(make_submission(test, art, params=params)[TARGETS].to_numpy(), refit, atol=1e-12)
    np.testing.assert_allclose(make_submission(test, art, reuse_cached=True, params=params)[TARGETS].to_numpy(),
                               refit, atol=1e-12)
    assert not np.allclose(refit, average)
    judge = Judge.load(art, params=params, warm=False)  # the Judge and the bundle hold the refit alone
    np.testing.assert_allclose(judge.predict_frame(test)[TARGETS].to_numpy(), refit, atol=1e-12)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    manifest = _bundle(tmp_path / "bundle", art, tmp_path / "params.yaml", [], [], False, [])
    assert manifest["models"] == {"toy": 1}
    assert {f.split("/")[3] for f in manifest["files"] if f.startswith("artifacts/models/")} == {REFIT_DIR}

    params["toy"] = {"folds": [0, 1]}  # fold 1 was never trained: refused, not silently averaged without it
    with pytest.raises(DataError, match="fold_1 missing or unfinished for the folds \\[0, 1\\]"):
        make_submission(test, art, params=params)
