"""End to end: `dvc repro` on a tiny demo config in a temporary copy of the project, then the
user commands (`python -m ensemble.blend`, `python -m ensemble.submit`) against its artifacts."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT

TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]
pytestmark = pytest.mark.slow

#: Overrides that shrink every stage to seconds; the pipeline's wiring is what is under test.
TINY = {
    "demo": {"n_train": 160, "n_test": 40, "seed": 1},
    "folds": {"n_splits": 3, "seed": 0},
    "lgbm": {"n_estimators": 40, "learning_rate": 0.1, "early_stopping_rounds": 10,
             "vectorizer": {"max_features": 200}},
    "dual_tower": {"max_len": 48, "train": {"epochs": 2}},
    "llm": {"num_layers": 1, "max_len": 48, "max_train_rows": 12, "train": {"max_steps": 2}},
}


def env(cwd) -> dict:
    """The environment of a command run in a copy of the project: its code, this venv, no hub."""
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
            "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}


def run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, env=env(cwd), capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and proc.returncode:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def deep_update(base: dict, new: dict) -> dict:
    for key, value in new.items():
        base[key] = deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline") / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    params = yaml.safe_load((work / "params.yaml").read_text())
    deep_update(params, TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", work)
    proc = run(["dvc", "repro"], work)
    return work, params, proc.stdout


def test_repro_writes_every_artifact(project):
    work, params, log = project
    art = work / "artifacts"
    train = pd.read_parquet(art / "prepared" / "train.parquet")
    assert len(train) == TINY["demo"]["n_train"]
    for name in params["blend"]["models"]:
        oof = pd.read_parquet(art / "oof" / f"{name}.parquet")
        assert list(oof["id"]) == list(train["id"])  # OOF rows line up across models
        assert np.allclose(oof[TARGETS].sum(axis=1), 1) and oof["fold"].nunique() == 3
        assert len(list((art / "models" / name).glob("fold_*/done.json"))) == 3
    metrics = yaml.safe_load((art / "metrics.json").read_text())
    assert metrics["blend"]["log_loss"] < metrics["prior"]["log_loss"]
    head = yaml.safe_load((work / "metrics.json").read_text())  # the small git-tracked one DVC shows
    assert head["blend"]["log_loss_crossfit"] == metrics["blend"]["log_loss"]
    assert len(head["blend"]["diff_vs_best_ci"]) == 2 and "winner_tie" not in head["blend"]
    assert "blend.log_loss_crossfit" in run(["dvc", "metrics", "show"], work).stdout
    reliability = pd.read_csv(art / "plots" / "reliability.csv")
    assert {*params["blend"]["models"], "perfect calibration"} < set(reliability["model"])
    assert len(pd.read_csv(art / "plots" / "confusion.csv")) == len(train)
    plots = run(["dvc", "plots", "show", "--json"], work).stdout  # DVC renders both with the project's templates
    assert "reliability.csv" in plots and "confusion.csv" in plots
    # no pickle anywhere in the artifacts (a tampered artifacts folder or DVC remote must not run code)
    pickles = [str(p.relative_to(art)) for p in art.rglob("*") if p.is_file() and _is_pickle(p)]
    assert pickles == []
    sub = pd.read_csv(art / "submission.csv", dtype={"id": str})
    test = pd.read_csv(art / "demo" / "demo_test.csv", dtype={"id": str})
    assert list(sub.columns) == ["id", *TARGETS] and list(sub["id"]) == list(test["id"])
    # a second repro has nothing to do
    assert "up to date" in run(["dvc", "status"], work).stdout


def _is_pickle(path) -> bool:
    """A pickle stream starts with the PROTO opcode (0x80) and a protocol number; joblib/.pkl files do."""
    head = path.open("rb").read(2)
    return path.suffix in (".pkl", ".pickle", ".joblib") or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def test_changing_lgbm_param_reruns_only_downstream(project):
    work, params, _ = project
    original = (work / "params.yaml").read_text()
    params["lgbm"]["num_leaves"] = 7
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status"], work).stdout
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith("\t")}
    # teachers reruns on any params edit (milliseconds) and rewrites the same files: no other model stage reruns
    assert {"teachers", "model@lgbm", "blend", "submit", "report"} >= changed >= {"model@lgbm"}
    assert not changed & {"demo", "prepare", "folds", "model@llm", "model@dual_tower"}
    # submit refuses fold models trained for other params
    proc = run([sys.executable, "-m", "ensemble.submit", "artifacts/demo/demo_test.csv", "-o", "s.csv"], work,
               check=False)
    assert proc.returncode == 2 and "lgbm.num_leaves changed" in proc.stderr and "Traceback" not in proc.stderr
    (work / "params.yaml").write_text(original)
    params["lgbm"]["num_leaves"] = yaml.safe_load(original)["lgbm"].get("num_leaves", 15)


def test_blend_cli_refits_in_seconds(project):
    work, _, _ = project
    before = (work / "metrics.json").read_text()
    proc = run([sys.executable, "-m", "ensemble.blend"], work)
    assert (work / "metrics.json").read_text() == before  # deterministic: a rerun leaves git clean
    assert "blend select, in-sample" in proc.stdout and "blend select, crossfit" in proc.stdout
    assert "blend greedy, crossfit" in proc.stdout and "class prior" in proc.stdout


def test_submit_cli_valid_submission(project, tmp_path):
    work, _, _ = project
    test_csv = work / "artifacts" / "demo" / "demo_test.csv"
    # the test rows with labels added (any labels: they change no prediction), so one run checks the
    # predictions and the scoring of a labelled file
    labelled = pd.read_csv(test_csv)
    for j, target in enumerate(TARGETS):
        labelled[target] = (np.arange(len(labelled)) % 3 == j).astype(int)
    labelled_csv = tmp_path / "labelled_test.csv"
    labelled.to_csv(labelled_csv, index=False)
    out = tmp_path / "submission.csv"
    proc = run([sys.executable, "-m", "ensemble.submit", str(labelled_csv), "-o", str(out)], work)
    assert "rows of the file's labels" in proc.stdout  # a labelled file reports its log loss
    sub = pd.read_csv(out, dtype={"id": str})
    ids = pd.read_csv(test_csv, dtype={"id": str})["id"]
    assert list(sub.columns) == ["id", *TARGETS] and list(sub["id"]) == list(ids)
    values = sub[TARGETS].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
    assert np.abs(values.sum(axis=1) - 1).max() < 1e-6
    # predicting afresh from the saved fold models matches what the pipeline wrote
    cached = pd.read_csv(work / "artifacts" / "submission.csv", dtype={"id": str})
    np.testing.assert_allclose(values, cached[TARGETS].to_numpy(), atol=1e-6)
    # bad input: clear message, exit 2, nothing written
    bad = tmp_path / "bad.csv"
    pd.read_csv(test_csv).drop(columns=["prompt"]).to_csv(bad, index=False)
    proc = run([sys.executable, "-m", "ensemble.submit", str(bad), "-o", str(tmp_path / "s3.csv")], work, check=False)
    assert proc.returncode == 2 and "prompt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s3.csv").exists()


def test_converted_smollm2_trains_and_predicts(project):
    """The `convert_llm` stage's SmolLM2 folder (GGUF -> safetensors, converted once by the pipeline above) is a
    normal HF model folder: 4-bit LoRA fits on it, predicts, and the battle text starts with the layout."""
    from conftest import battle_frame

    from ensemble.models.llm.model import LLMModel

    work, _, _ = project
    folder = work / "artifacts" / "pretrained" / "smollm2"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    frame = battle_frame(16)
    model = LLMModel(dict(base_model=str(folder), quantization="4bit", max_len=64, num_layers=4,
                          train={"epochs": 1, "batch_size": 8}))
    model.fit(frame.iloc[:8].reset_index(drop=True), frame.iloc[8:].reset_index(drop=True))
    proba = model.predict_proba(frame.iloc[8:])
    assert proba.shape == (8, 3) and np.isfinite(proba).all()
    text = model.tokenizer.decode(model._encoder().encode_frame(frame.iloc[:1]).ids[0])
    assert text.startswith("User prompt:\nquestion 0") and "Model B:\n" in text


# holds the repository lock until a line arrives on stdin (or 120 s pass): released once parallel_stages
# has met it, so the test waits no longer than that takes
HOLD_LOCK = """
import select, sys
from dvc.repo import Repo
with Repo(".") as repo, repo.lock:
    print("locked", flush=True)
    select.select([sys.stdin], [], [], 120)
"""


def cache_files(work):
    return sorted(str(p.relative_to(work / ".dvc" / "cache")) for p in (work / ".dvc" / "cache").rglob("*")
                  if p.is_file())


def stage_cache_files(work, lock: dict, stage: str) -> set[str]:
    """The cache files (relative to .dvc/cache) of a stage's outputs in dvc.lock: each file's, and for a
    folder its .dir listing and every file in it."""
    import json

    root = work / ".dvc" / "cache" / "files" / "md5"
    files = set()
    for out in lock["stages"][stage]["outs"]:
        md5 = out["md5"]
        files.add(f"files/md5/{md5[:2]}/{md5[2:]}")
        if md5.endswith(".dir"):
            for entry in json.loads((root / md5[:2] / md5[2:]).read_text()):
                files.add(f"files/md5/{entry['md5'][:2]}/{entry['md5'][2:]}")
    return files


def test_parallel_stages_leave_dvc_lock_and_cache_as_the_sequential_repro(project, tmp_path):
    """`python -m ensemble.pipeline.parallel_stages lgbm dual_tower` runs both model stages at once and leaves
    dvc.lock and the cache exactly as the sequential `dvc repro` above, even while another DVC process holds
    the repository lock. The parallel run's project is a copy of this one as if the two stages had never
    run: their dvc.lock entries, outputs (fold models included) and cached files removed."""
    import time

    work, _, _ = project
    parallel = tmp_path / "parallel"
    shutil.copytree(work, parallel, symlinks=True)
    stages = ("model@lgbm", "model@dual_tower")
    lock = yaml.safe_load((parallel / "dvc.lock").read_text())
    removed = set().union(*(stage_cache_files(parallel, lock, stage) for stage in stages))
    for stage in stages:
        del lock["stages"][stage]
    (parallel / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    for name in ("lgbm", "dual_tower"):
        for kind in ("oof", "test"):
            (parallel / "artifacts" / kind / f"{name}.parquet").unlink()
        shutil.rmtree(parallel / "artifacts" / "models" / name)
    for rel in removed:
        (parallel / ".dvc" / "cache" / rel).unlink(missing_ok=True)  # a file two outputs share goes once
    assert not set(cache_files(parallel)) & removed

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK], cwd=parallel, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    proc = None
    try:
        assert holder.stdout.readline().strip() == "locked"  # another DVC process holds the lock
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "ensemble.pipeline.parallel_stages", "lgbm", "dual_tower"],
                                cwd=parallel, env=env(parallel), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:  # until it has met the lock and waits for it
            lines.append(line)
            if "retrying" in line:
                break
        holder.communicate("release\n", timeout=60)
        lines += proc.stdout.readlines()
        assert proc.wait() == 0, "".join(lines[-40:])
        seconds = time.perf_counter() - start
    finally:
        holder.kill()
        holder.wait()
        if proc is not None and proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert "locked by another DVC process; retrying" in out
    assert "Running stage 'model@lgbm'" in out and "Running stage 'model@dual_tower'" in out
    assert "committed model@lgbm, model@dual_tower to dvc.lock and the cache" in out
    assert "fold 0: training on" in out  # trained afresh, not reassembled from kept folds

    lock_par = yaml.safe_load((parallel / "dvc.lock").read_text())
    lock_seq = yaml.safe_load((work / "dvc.lock").read_text())
    assert lock_par == lock_seq  # every dep, param and output hash as the sequential repro wrote them
    # DVC appends a stage new to dvc.lock; parallel_stages commits in dvc.yaml order
    assert list(lock_par["stages"]) == [*lock["stages"], *stages]
    assert cache_files(parallel) == cache_files(work)
    status = run(["dvc", "status", "model@lgbm", "model@dual_tower"], parallel).stdout  # the lock matches the workspace
    assert "up to date" in status, status

    again = run([sys.executable, "-m", "ensemble.pipeline.parallel_stages", "lgbm", "dual_tower"], parallel).stdout
    assert "Stage 'model@lgbm' didn't change, skipping" in again and "Running stage" not in again
    print(f"\nparallel_stages (waiting for the lock first) {seconds:.1f} s")
