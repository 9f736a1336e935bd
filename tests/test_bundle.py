"""`python -m ensemble.bundle OUT` and OUT/predict.py: a finished run bundled, predicted offline from the folder
alone, equal to `python -m ensemble.submit`; a bundle with a file missing is one line, exit 2. The end-to-end
case (wheels, a fresh virtual environment holding only torch, pip with no index) runs with
ENSEMBLE_BUNDLE_TEST=1 (`make test-bundle`): it downloads ~100 MB of wheels and installs them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import battle_frame, raw_csv

from ensemble.blend.run import run as run_blend
from ensemble.core.data import save_battles
from ensemble.core.folds import make_folds
from ensemble.pipeline.bundle import main as bundle_main
from ensemble.pipeline.bundle import requirement_closure
from ensemble.pipeline.oof import run_oof
from ensemble.pipeline.submit import main as submit_main

ROOT = Path(__file__).resolve().parents[1]
LGBM = {"n_estimators": 15, "early_stopping_rounds": 0, "n_jobs": 1, "vectorizer": {"max_features": 50, "min_df": 1}}
TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished LightGBM run laid out as a project: params.yaml, artifacts/ (folds, prepared, models, blend)."""
    root = tmp_path_factory.mktemp("bundle_run")
    art = root / "artifacts"
    frame = battle_frame(150, seed=3)
    train = frame.iloc[:120].reset_index(drop=True)
    save_battles(art / "prepared" / "train.parquet", train)
    folds = make_folds(train, 3, seed=0)
    folds.to_parquet(art / "folds.parquet")
    params = {"lgbm": LGBM, "blend": {"models": ["lgbm"], "bootstrap": 0}}
    (root / "params.yaml").write_text(json.dumps(params))
    run_oof("lgbm", LGBM, train, folds, art)
    run_blend(params, art, metrics_path=root / "metrics.json")
    test_csv = raw_csv(frame.iloc[120:].reset_index(drop=True), root / "test.csv", labels=False)
    return root, test_csv


def _bundle(root: Path, out: Path, *extra) -> None:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert bundle_main([str(out), "--artifacts", "artifacts", "--params", "params.yaml", *extra]) == 0
    finally:
        os.chdir(cwd)


def _submit(root: Path, test_csv: Path, out_csv: Path) -> pd.DataFrame:
    submit_main([str(test_csv), "-o", str(out_csv), "--artifacts", str(root / "artifacts"),
                 "--params", str(root / "params.yaml")])
    return pd.read_csv(out_csv)


def _predict(out: Path, test_csv: Path, result: Path, python: str = sys.executable, *extra, env=None):
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(ROOT) if python == sys.executable else ""
    return subprocess.run([python, str(out / "predict.py"), str(test_csv), "-o", str(result), *extra],
                          capture_output=True, text=True, env=env)


def test_bundle_predicts_offline_what_submit_predicts_and_refuses_a_missing_file(run_dir, tmp_path):
    """Breaks if the bundle misses a file predict needs (the folds, the training rows the fingerprint reads,
    the blend), if predict.py does not run submit from the folder, or if a missing file is not one line."""
    root, test_csv = run_dir
    out = tmp_path / "bundle"
    _bundle(root, out, "--no-wheels")
    manifest = json.loads((out / "bundle.json").read_text())
    assert manifest["models"] == {"lgbm": 3} and "torch" not in manifest["requirements"]
    assert not any(name.endswith(("valid_pred.npy", "test_pred.npy")) for name in manifest["files"])
    expected = _submit(root, test_csv, tmp_path / "expected.csv")
    shutil.move(str(root / "artifacts"), str(tmp_path / "moved"))  # the bundle must not need the project
    try:
        proc = _predict(out, test_csv, tmp_path / "sub.csv", sys.executable, "--no-install")
    finally:
        shutil.move(str(tmp_path / "moved"), str(root / "artifacts"))
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(tmp_path / "sub.csv")
    assert list(got["id"].astype(str)) == list(expected["id"].astype(str))
    np.testing.assert_allclose(got[TARGETS].to_numpy(), expected[TARGETS].to_numpy(), atol=1e-12)
    (out / "artifacts" / "models" / "lgbm" / "fold_1" / "booster.txt").unlink()
    proc = _predict(out, test_csv, tmp_path / "sub2.csv", sys.executable, "--no-install")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "fold_1/booster.txt" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "sub2.csv").exists()


def test_bundle_refuses_a_non_empty_folder_and_a_test_file_without_a_column(run_dir, tmp_path):
    from ensemble.core.cli import fail_cleanly

    root, test_csv = run_dir
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert fail_cleanly(lambda: bundle_main([str(tmp_path / "full"), "--no-wheels"])) == 2
    finally:
        os.chdir(cwd)
    out = tmp_path / "bundle"
    _bundle(root, out, "--no-wheels")
    bad = tmp_path / "bad.csv"
    pd.read_csv(test_csv).drop(columns="response_b").to_csv(bad, index=False)
    proc = _predict(out, bad, tmp_path / "sub.csv", sys.executable, "--no-install")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "response_b" in errors[0], proc.stderr


def test_requirement_closure_follows_metadata_and_stops_at_excluded():
    pins = requirement_closure(["pandas"], ["numpy"])
    assert "pandas" in pins and "numpy" not in pins and "python-dateutil" in pins
    assert "torch" not in requirement_closure(["peft"], ["torch"])


@pytest.mark.skipif(os.environ.get("ENSEMBLE_BUNDLE_TEST") != "1",
                    reason="bundle end to end (wheels + a fresh venv): ENSEMBLE_BUNDLE_TEST=1 / make test-bundle")
def test_bundle_end_to_end_fresh_venv_with_only_torch_and_no_index(run_dir, tmp_path):
    """The bundle's wheels install into a virtual environment that has torch alone, with the package index
    unreachable, and predict.py then writes the same submission as submit."""
    root, test_csv = run_dir
    out = tmp_path / "bundle"
    _bundle(root, out)
    assert any(p.name.startswith("arena_ensemble-") for p in (out / "wheels").glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)  # what the Kaggle image has
    offline = dict(os.environ, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_INDEX="1",
                   PIP_FIND_LINKS="", HF_HUB_OFFLINE="1")
    offline.pop("PYTHONPATH", None)
    proc = _predict(out, test_csv, tmp_path / "sub.csv", py, env=offline)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _submit(root, test_csv, tmp_path / "expected.csv")
    got = pd.read_csv(tmp_path / "sub.csv")
    np.testing.assert_allclose(got[TARGETS].to_numpy(), expected[TARGETS].to_numpy(), atol=1e-9)


def test_a_bundled_student_carries_what_its_teachers_part_reads(tmp_path):
    """A student of a teacher from elsewhere, with pseudo-labelled battles: the bundle carries the teacher's files
    and the unlabelled battles, so predict.py (submit's check of every part, teachers included) runs from the
    folder alone. Breaks if the bundle leaves either out."""
    root, art = tmp_path / "project", tmp_path / "project" / "artifacts"
    frame = battle_frame(150, seed=3)
    train = frame.iloc[:120].reset_index(drop=True)
    unlabelled = battle_frame(30, seed=4).drop(columns="label").assign(id=lambda f: "u" + f["id"])
    save_battles(art / "prepared" / "train.parquet", train)
    save_battles(art / "prepared" / "unlabelled.parquet", unlabelled)
    folds = make_folds(train, 3, seed=0)
    folds.to_parquet(art / "folds.parquet")
    teacher = root / "teachers" / "oracle"
    teacher.mkdir(parents=True)
    uniform = dict.fromkeys(TARGETS, 1 / 3)
    pd.DataFrame({"id": train["id"], **uniform}).to_parquet(teacher / "oof.parquet")
    pd.concat([pd.DataFrame({"id": unlabelled["id"], "fold": k, **uniform}) for k in range(3)]).to_parquet(
        teacher / "unlabelled.parquet")
    student = {**LGBM, "distill": {"teachers": ["oracle"], "mode": "leaky", "weight": 0.5}}
    params = {"lgbm": student, "blend": {"models": ["lgbm"], "bootstrap": 0}}
    (root / "params.yaml").write_text(json.dumps(params))
    run_oof("lgbm", student, train, folds, art, unlabelled=unlabelled, teacher_dir=root / "teachers")
    run_blend(params, art, metrics_path=root / "metrics.json")
    test_csv = raw_csv(frame.iloc[120:].reset_index(drop=True), tmp_path / "test.csv", labels=False)
    out = tmp_path / "bundle"
    _bundle(root, out, "--no-wheels")
    assert (out / "teachers" / "oracle" / "oof.parquet").is_file()
    assert (out / "artifacts" / "prepared" / "unlabelled.parquet").is_file()
    shutil.move(str(root), str(tmp_path / "moved"))  # the bundle must not need the project
    proc = _predict(out, test_csv, tmp_path / "sub.csv", sys.executable, "--no-install")
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "sub.csv")) == 30
