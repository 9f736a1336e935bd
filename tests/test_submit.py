"""Submit against a small finished LightGBM run: the fold set must match the folds, models from
elsewhere come in through their files, and every bad input is one line and exit 2."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import battle_frame

from ensemble.blend.run import run as run_blend
from ensemble.core.cli import fail_cleanly
from ensemble.core.data import DataError, load_battles, save_battles
from ensemble.core.folds import make_folds
from ensemble.core.predictions import proba_frame
from ensemble.pipeline.oof import run_oof
from ensemble.pipeline.submit import main, make_submission, read_blender

TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]
LGBM = {"n_estimators": 15, "early_stopping_rounds": 0, "n_jobs": 1,
        "vectorizer": {"max_features": 50, "min_df": 1}}


@pytest.fixture(scope="module", autouse=True)
def fixed_code_digest():
    """The fingerprint hashes the code a model imports; pinned so an edit elsewhere mid-run changes nothing."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-v1")
        yield mp


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fixed_code_digest):
    art = tmp_path_factory.mktemp("submit") / "artifacts"
    frame = battle_frame(150, seed=3)
    train, test = frame.iloc[:120].reset_index(drop=True), frame.iloc[120:].drop(columns="label").reset_index(drop=True)
    save_battles(art / "prepared" / "train.parquet", train)
    save_battles(art / "prepared" / "test.parquet", test)
    folds = make_folds(train, 3, seed=0)
    folds.to_parquet(art / "folds.parquet")
    run_oof("lgbm", LGBM, train, folds, art, test=test)
    # a model from elsewhere: informative OOF on the project's folds, and test predictions
    rng = np.random.default_rng(0)
    ext = 0.5 * np.eye(3)[train["label"]] + 0.5 * rng.dirichlet(np.ones(3), len(train))
    proba_frame(train["id"], ext, folds["fold"].to_numpy()).to_parquet(art / "oof" / "gemma.parquet")
    proba_frame(test["id"][::-1], rng.dirichlet(np.ones(3), len(test))).to_parquet(art / "test" / "gemma.parquet")
    return art, train, test


def params_for(models, **blend):
    return {"lgbm": LGBM, "blend": {"models": models, "bootstrap": 50, **blend}}


@pytest.fixture
def art(finished, tmp_path):
    """A private copy, so a test may break it."""
    src, train, test = finished
    shutil.copytree(src, tmp_path / "artifacts")
    return tmp_path / "artifacts", train, test


@pytest.mark.parametrize("method", ["weights", "stack", "select"])
def test_fresh_prediction_matches_cached_and_external_model_is_used(art, method):
    art, train, test = art
    params = params_for(["lgbm", "gemma"], method=method)
    run_blend(params, art, metrics_path=art / "head.json")
    fresh = make_submission(test, art, params=params)
    cached = make_submission(test, art, reuse_cached=True, params=params)
    assert list(fresh["id"]) == list(test["id"])
    np.testing.assert_allclose(fresh[TARGETS].to_numpy(), cached[TARGETS].to_numpy(), atol=1e-9)
    assert json.loads((art / "blend.json").read_text())["method"] == method
    weights = read_blender(art).model_weights()
    if weights is None or weights["gemma"] > 0.01:  # gemma's test file is what submit reads for it
        path = art / "test" / "gemma.parquet"
        gemma = pd.read_parquet(path)
        gemma[TARGETS] = gemma[TARGETS].to_numpy()[::-1]
        gemma.to_parquet(path)
        changed = make_submission(test, art, params=params)
        assert not np.allclose(changed[TARGETS].to_numpy(), fresh[TARGETS].to_numpy())


def _fails(art, test, params, message, tmp_path, reuse=False):
    test_csv = tmp_path / "t.parquet"
    save_battles(test_csv, test)
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    argv = [str(test_csv), "-o", str(tmp_path / "sub.csv"), "--artifacts", str(art), "--params",
            str(tmp_path / "params.yaml")] + (["--reuse-test-predictions"] if reuse else [])
    with pytest.raises(DataError) as err:
        main(argv)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert fail_cleanly(lambda: main(argv)) == 2 and not (tmp_path / "sub.csv").exists()


def test_missing_extra_or_stale_fold_models_are_refused(art, tmp_path, fixed_code_digest):
    art, train, test = art
    params = params_for(["lgbm"])
    run_blend(params, art, metrics_path=art / "head.json")
    folds = art / "models" / "lgbm"
    (folds / "fold_1" / "done.json").rename(tmp_path / "done.json")
    _fails(art, test, params, "fold_1 missing or unfinished for the 3 folds", tmp_path)
    (tmp_path / "done.json").rename(folds / "fold_1" / "done.json")
    shutil.copytree(folds / "fold_0", folds / "fold_3")  # left by a run with n_splits 4
    _fails(art, test, params, "fold_3 beyond the 3 folds", tmp_path)
    shutil.rmtree(folds / "fold_3")
    stale = {**params, "lgbm": {**LGBM, "n_estimators": 16}}
    _fails(art, test, stale, "fold_0: no longer matches its fingerprint: params lgbm.n_estimators changed", tmp_path)
    fixed_code_digest.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-v2")
    _fails(art, test, params, "fold_0: no longer matches its fingerprint: the code the model declares changed since "
           "it was trained; run `dvc repro model@lgbm` (after a code or library change only: or submit "
           "--skip-code-check)", tmp_path)
    assert len(make_submission(test, art, params=params, check_code=False)) == len(test)  # --skip-code-check
    fixed_code_digest.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-v1")
    assert len(make_submission(test, art, params=params)) == len(test)
    battles = load_battles(art / "prepared" / "train.parquet")
    edited = battles.copy()
    edited.at[5, "response_a"] = edited.at[5, "response_a"] + [" (edited)"]  # one text, same ids and labels
    save_battles(art / "prepared" / "train.parquet", edited)
    _fails(art, test, params, "the training rows (ids, texts or labels) changed", tmp_path)
    save_battles(art / "prepared" / "train.parquet", battles.assign(label=(battles["label"] + 1) % 3))
    _fails(art, test, params, "the training rows (ids, texts or labels) changed", tmp_path)


def test_external_test_file_must_cover_the_test_file(art, tmp_path):
    art, train, test = art
    params = params_for(["lgbm", "gemma"])
    run_blend(params, art, metrics_path=art / "head.json")
    path = art / "test" / "gemma.parquet"
    pd.read_parquet(path).iloc[1:].to_parquet(path)
    _fails(art, test, params, "gemma.parquet: no predictions for 1 of the 30 ids", tmp_path)
    _fails(art, test, params, "gemma is a model from elsewhere", tmp_path)


BAD_OOF = {  # how the external OOF file is broken -> what the one-line message says
    "missing id": (lambda f: f.iloc[1:], "no OOF rows for 1 training ids"),
    "extra id": (lambda f: pd.concat([f, f.iloc[:1].assign(id="stranger")]), "1 id(s) that are not training ids"),
    "duplicate id": (lambda f: pd.concat([f, f.iloc[:1]]), "1 duplicate id(s)"),
    "other folds": (lambda f: f.assign(fold=(f["fold"] + 1) % 3), "column fold differs from"),
    "float folds": (lambda f: f.assign(fold=f["fold"] + 0.5), "column fold has dtype float64"),
    "no fold column": (lambda f: f.drop(columns="fold"), "missing column(s) fold"),
    "NaN": (lambda f: f.assign(winner_tie=np.where(np.arange(len(f)) == 3, np.nan, f["winner_tie"])), "NaN/inf"),
    "negative": (lambda f: f.assign(winner_model_a=-f["winner_model_a"]), "outside [0, 1]"),
    "unnormalised": (lambda f: f.assign(**{t: 0.9 * f[t] for t in TARGETS}), "do not sum to 1"),
}


@pytest.mark.parametrize("case", list(BAD_OOF))
def test_malformed_external_oof_is_one_line_exit_2(art, case, tmp_path, capsys):
    from ensemble.blend.__main__ import main as blend_main

    art, _, _ = art
    path = art / "oof" / "gemma.parquet"
    breaks, message = BAD_OOF[case]
    breaks(pd.read_parquet(path)).to_parquet(path)
    (tmp_path / "params.yaml").write_text(json.dumps(params_for(["lgbm", "gemma"])))
    code = fail_cleanly(lambda: blend_main(["--params", str(tmp_path / "params.yaml"), "--artifacts", str(art),
                                            "--metrics", str(tmp_path / "m.json")]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "gemma.parquet" in err and message in err, err


def test_blend_checks_the_external_test_file_up_front(art, tmp_path):
    art, _, _ = art
    path = art / "test" / "gemma.parquet"
    pd.read_parquet(path).iloc[:-2].to_parquet(path)
    with pytest.raises(DataError, match="gemma.parquet: no predictions for 2 of the 30 ids of .*prepared/test.parquet"):
        run_blend(params_for(["lgbm", "gemma"]), art, metrics_path=tmp_path / "m.json")
    path.unlink()
    with pytest.raises(DataError,
                       match="gemma.parquet: no prediction file for model 'gemma'; .* for a model from elsewhere"):
        run_blend(params_for(["lgbm", "gemma"]), art, metrics_path=tmp_path / "m.json")


def test_reused_test_predictions_are_refused_when_a_test_text_changed(art, tmp_path):
    """artifacts/test/<model>.parquet remembers the texts it was predicted for: the same ids with an edited
    text are refused with --reuse-test-predictions. Breaks if the check compares ids only (the old way)."""
    art, train, test = art
    params = params_for(["lgbm"])
    run_blend(params, art, metrics_path=art / "head.json")
    assert make_submission(test, art, reuse_cached=True, params=params) is not None
    edited = test.copy()
    edited.at[3, "response_a"] = ["an answer written since"]
    _fails(art, edited, params, "1 of the 30 ids of", tmp_path, reuse=True)
    fresh = make_submission(edited, art, params=params)  # predicting anew is fine
    assert len(fresh) == len(edited)


def test_submit_puts_the_chosen_answer_on_the_side_prepare_did(tmp_path):
    """A preference test file is read with params data.side_seed, as prepare reads it: the same ids see
    the same sides. Breaks if submit reads the file with the default seed."""
    from ensemble.core.data import read_battles

    rows = [{"prompt": f"q {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}

    def fake(test, *args, **kwargs):
        seen["frame"] = test
        return proba_frame(test["id"], np.full((len(test), 3), 1 / 3))

    (tmp_path / "params.yaml").write_text(json.dumps({"data": {"side_seed": 1}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ensemble.pipeline.submit.make_submission", fake)
        main([str(path), "-o", str(tmp_path / "sub.csv"), "--params", str(tmp_path / "params.yaml")])
    want = read_battles(path, labels=None, drop_duplicates=False, side_seed=1)
    other = read_battles(path, labels=None, drop_duplicates=False, side_seed=0)
    got = seen["frame"]
    assert list(got["response_a"]) == list(want["response_a"])
    assert list(got["response_a"]) != list(other["response_a"])


def test_labelled_file_with_ties_on_a_binary_trained_run_is_scored_on_the_trained_classes_too(tmp_path, capsys):
    """A run trained without ties floors P(tie) at 1/(n+3): on a labelled file with ties submit prints the score
    on all rows and on the A/B rows, and how many tie rows it left out. Breaks if only the all-rows score is
    printed, or if the tie rows are counted in the second score."""
    from conftest import raw_csv

    from ensemble.core.metrics import accuracy, log_loss

    art = tmp_path / "artifacts"
    frame = battle_frame(150, seed=3)
    train = frame.iloc[:120].query("label != 2").reset_index(drop=True)  # binary preference data: no ties
    test = frame.iloc[120:].reset_index(drop=True)
    save_battles(art / "prepared" / "train.parquet", train)
    folds = make_folds(train, 3, seed=0)
    folds.to_parquet(art / "folds.parquet")
    run_oof("lgbm", LGBM, train, folds, art)
    params = params_for(["lgbm"], method="weights")
    run_blend(params, art, metrics_path=tmp_path / "m.json")
    assert read_blender(art).classes_ == [0, 1]
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    capsys.readouterr()
    main([str(raw_csv(test, tmp_path / "test.csv")), "-o", str(tmp_path / "sub.csv"), "--artifacts", str(art),
          "--params", str(tmp_path / "params.yaml")])
    out = capsys.readouterr().out.strip().splitlines()
    labels = test["label"].to_numpy()
    proba = pd.read_csv(tmp_path / "sub.csv")[TARGETS].to_numpy()
    ab, ties = labels != 2, int((labels == 2).sum())
    assert ties and out[1] == (f"log loss {log_loss(labels, proba):.4f}, accuracy {accuracy(labels, proba):.4f} on "
                               f"all 30 rows of the file's labels")
    assert out[2] == (f"log loss {log_loss(labels[ab], proba[ab]):.4f}, accuracy {accuracy(labels[ab], proba[ab]):.4f} "
                      f"on the {30 - ties} rows of the classes training had (A wins / B wins); {ties} tie rows left "
                      f"out: training had no tie rows, so P(tie) is floored at 1/(n+3) = {1 / (len(train) + 3):.4f} "
                      f"(n = {len(train)} training rows)")
    assert log_loss(labels[ab], proba[ab]) < log_loss(labels, proba)  # the floored ties dominate the first
