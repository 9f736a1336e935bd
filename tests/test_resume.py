"""Crash-resume for real: `python stages/oof.py <model>` is SIGKILLed after fold 1 has finished, rerun,
and must reuse the finished folds, end with the OOF of an uninterrupted run and leave no partial file.
And a writer killed in the middle of an atomic write leaves the old file intact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, battle_frame

N_SPLITS = 4


def stage_env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "ENSEMBLE_PROGRESS": "log", **extra}


def make_project(work: Path, params: dict, frame: pd.DataFrame, test: pd.DataFrame | None = None,
                 n_splits: int = N_SPLITS) -> Path:
    """The inputs of an OOF stage (params.yaml, artifacts/prepared, artifacts/folds.parquet) in `work`."""
    from ensemble.core.data import save_battles
    from ensemble.core.folds import make_folds

    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepared = work / "artifacts" / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    save_battles(prepared / "train.parquet", frame)
    save_battles(prepared / "test.parquet", (test if test is not None else frame.head(12)).drop(columns=["label"]))
    make_folds(frame, n_splits, seed=0).to_parquet(work / "artifacts" / "folds.parquet", index=False)
    return work


def stage_cmd(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "stages" / "oof.py"), name]


def run_stage(work: Path, name: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(stage_cmd(name), cwd=work, env=stage_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def kill_after_fold(work: Path, name: str, fold: int, timeout: float = 600) -> float:
    """Start the stage, SIGKILL it as soon as `fold`'s done.json exists; the seconds it ran."""
    done = work / "artifacts" / "models" / name / f"fold_{fold}" / "done.json"
    start = time.perf_counter()
    proc = subprocess.Popen(stage_cmd(name), cwd=work, env=stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        while not done.exists():
            if proc.poll() is not None:
                pytest.fail(f"the stage ended ({proc.returncode}) before fold {fold} finished:\n"
                            f"{proc.stdout.read()[-3000:]}")
            if time.perf_counter() - start > timeout:
                pytest.fail(f"fold {fold} did not finish within {timeout} s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return time.perf_counter() - start


def leftovers(artifacts: Path) -> list[str]:
    return sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.name.endswith(".tmp"))


def check_kill_and_resume(tmp_path: Path, name: str, params: dict, frame: pd.DataFrame, unit: str) -> dict:
    """unit: a file every finished fold holds, whose mtime shows it was not rewritten."""
    crashed = make_project(tmp_path / "crashed", params, frame)
    clean = make_project(tmp_path / "clean", params, frame)
    figures = {"kill_after_s": kill_after_fold(crashed, name, 1)}
    models = crashed / "artifacts" / "models" / name
    assert not (crashed / "artifacts" / "oof" / f"{name}.parquet").exists(), "the run ended before the kill"
    assert not (models / f"fold_{N_SPLITS - 1}" / "done.json").exists()
    stamps = {k: (models / f"fold_{k}" / unit).stat().st_mtime_ns for k in (0, 1)}

    start = time.perf_counter()
    proc = run_stage(crashed, name)
    out = proc.stdout + proc.stderr
    figures["resume_s"] = time.perf_counter() - start
    start = time.perf_counter()
    from ensemble.nn.training import intra_op_threads

    with intra_op_threads(1):  # the reference run: the stage's own main in this process, one thread as the stage had
        stage_in_process(clean, name)
    figures["uninterrupted_s"] = time.perf_counter() - start

    for k in (0, 1):  # finished folds reused: not retrained, their files untouched
        assert f"fold {k}: already done, reusing" in out
        assert (models / f"fold_{k}" / unit).stat().st_mtime_ns == stamps[k]
    for k in range(2, N_SPLITS):
        assert f"fold {k}: training on" in out
    fit = json.loads((crashed / "artifacts" / "timings" / f"{name}.json").read_text())["fit_seconds"]
    assert fit["0"] == fit["1"] == 0.0 and fit["2"] > 0
    for kind in ("oof", "test"):
        got = pd.read_parquet(crashed / "artifacts" / kind / f"{name}.parquet")
        want = pd.read_parquet(clean / "artifacts" / kind / f"{name}.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-7, rtol=0)
    assert leftovers(crashed / "artifacts") == []
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [f"fold_{k}" for k in range(N_SPLITS)]
    for k in range(N_SPLITS):  # every fold folder holds the same files as the uninterrupted run's
        assert sorted(p.name for p in (models / f"fold_{k}").iterdir()) == \
            sorted(p.name for p in (clean / "artifacts" / "models" / name / f"fold_{k}").iterdir())
    print(f"\n{name} kill/resume: {figures}")
    return figures


def test_lgbm_stage_killed_after_fold_1_resumes(tmp_path):
    params = {"lgbm": {"n_estimators": 300, "early_stopping_rounds": 0, "num_leaves": 15, "n_jobs": 1,
                       "vectorizer": {"max_features": 300}}}
    check_kill_and_resume(tmp_path, "lgbm", params, battle_frame(400, seed=3), "booster.txt")


def test_dual_tower_stage_killed_after_fold_1_resumes(tmp_path, tiny_backbone):
    params = {"dual_tower": {"backbone": tiny_backbone, "max_len": 32, "device": "cpu", "freeze_layers": 0,
                             "use_features": False, "calib_frac": 0.0, "infer_max_tokens": 512,
                             "train": {"max_steps": 2, "batch_size": 8, "precision": "fp32", "warmup_ratio": 0.0}}}
    check_kill_and_resume(tmp_path, "dual_tower", params, battle_frame(48, seed=4), "model.json")


def stage_in_process(work: Path, name: str) -> None:
    """`python stages/oof.py <name>` run in this process (the stage's own main, in `work`): the stage's
    code without the seconds an interpreter start and its imports cost."""
    import runpy

    stage = runpy.run_path(str(ROOT / "stages" / "oof.py"))  # not run as __main__: main() is not called
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(sys, "argv", [str(ROOT / "stages" / "oof.py"), name])
        assert stage["main"]() == 0


def test_lgbm_stage_rerun_after_a_training_text_edit_reuses_only_the_fold_validating_it(tmp_path, capsys):
    """A run that crashed after fold 1 (folds 0 and 1 finished), then one training text edited in
    artifacts/prepared/train.parquet (same ids, labels and folds): the rerun of the stage must retrain the
    finished fold that trains on that battle too, not only the missing ones, reuse the one that validates it
    (predicting it again), and end with exactly what an uninterrupted run on the edited data writes.
    (test_fingerprint checks the same with a negative control, in process.)"""
    from ensemble.core.data import load_battles, save_battles
    from ensemble.core.folds import attach_folds

    params = {"lgbm": {"n_estimators": 40, "early_stopping_rounds": 0, "num_leaves": 15, "n_jobs": 1,
                       "vectorizer": {"max_features": 300}}}
    frame = battle_frame(200, seed=3)
    test = frame.head(12)
    crashed = make_project(tmp_path / "crashed", params, frame, test)
    stage_in_process(crashed, "lgbm")
    models = crashed / "artifacts" / "models" / "lgbm"
    for k in range(2, N_SPLITS):  # what a kill after fold 1 leaves (test_lgbm_stage_killed_after_fold_1_resumes)
        (models / f"fold_{k}" / "done.json").unlink()
    (crashed / "artifacts" / "oof" / "lgbm.parquet").unlink()
    stamps = {k: (models / f"fold_{k}" / "booster.txt").stat().st_mtime_ns for k in (0, 1)}

    train_path = crashed / "artifacts" / "prepared" / "train.parquet"
    edited = load_battles(train_path)
    a, b = edited.at[100, "response_a"][0], edited.at[100, "response_b"][0]  # the longer answer made the shorter
    edited.at[100, "response_a"] = ["word"] if len(a) > len(b) else [a + " with a new ending" * 30]
    save_battles(train_path, edited)
    capsys.readouterr()
    stage_in_process(crashed, "lgbm")
    out = capsys.readouterr().err
    validating = int(attach_folds(edited, pd.read_parquet(crashed / "artifacts" / "folds.parquet"))[100])
    assert validating in (0, 1)  # a finished fold: the case this test is about
    for k in range(N_SPLITS):
        assert (f"fold {k}: training on" in out) is (k != validating), out[-3000:]
        assert (f"fold {k}: already done" in out) is (k == validating), out[-3000:]
    for k in (0, 1):  # the finished fold that trains on the battle was rewritten, the other kept
        assert ((models / f"fold_{k}" / "booster.txt").stat().st_mtime_ns != stamps[k]) is (k != validating)

    clean = make_project(tmp_path / "clean", params, edited, test)
    stage_in_process(clean, "lgbm")
    pd.testing.assert_frame_equal(pd.read_parquet(crashed / "artifacts" / "folds.parquet"),
                                  pd.read_parquet(clean / "artifacts" / "folds.parquet"))
    for kind in ("oof", "test"):
        got = pd.read_parquet(crashed / "artifacts" / kind / "lgbm.parquet")
        want = pd.read_parquet(clean / "artifacts" / kind / "lgbm.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-7, rtol=0)
    assert leftovers(crashed / "artifacts") == []


# ------------------------------------------------------------------------------- atomic writes
WRITER = """
import sys, time
from ensemble.core.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as fh:
        fh.write("new content, half written")
        fh.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


def test_writer_killed_mid_atomic_write_leaves_old_file(tmp_path):
    from ensemble.core.io import remove_stale_tmp

    target = tmp_path / "oof" / "model.parquet"
    target.parent.mkdir()
    target.write_text("old content")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=stage_env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        stale = list(target.parent.glob(".model.parquet.*.tmp"))
        assert len(stale) == 1 and stale[0].read_text() == "new content, half written"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert target.read_text() == "old content"
    assert remove_stale_tmp(target) == stale  # what the OOF runner does before a rerun
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.parquet"]


def test_remove_stale_tmp_in_a_model_folder(tmp_path):
    from ensemble.core.io import remove_stale_tmp

    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "done.json").write_text("{}")
    (tmp_path / "fold_0" / ".valid_pred.npy.abc.tmp").write_text("x")
    (tmp_path / "fold_1.tmp").mkdir()
    (tmp_path / "fold_1.tmp" / "booster.txt").write_text("x")
    remove_stale_tmp(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["fold_0", "fold_0/done.json"]
