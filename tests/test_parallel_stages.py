"""`python -m ensemble.pipeline.parallel_stages lgbm dual_tower` runs both model stages at once (tiny configs,
one thread each) and leaves dvc.lock and the cache exactly as a sequential `dvc repro model@lgbm model@dual_tower`, even
while another DVC process holds the repository lock."""

import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT
from test_pipeline import TINY, deep_update, env, run

pytestmark = pytest.mark.slow  # two small projects through dvc: ~1 min

# holds the repository lock until a line arrives on stdin (or 120 s pass): released once parallel_stages
# has met it, so the test waits no longer than that takes
HOLD_LOCK = """
import select, sys
from dvc.repo import Repo
with Repo(".") as repo, repo.lock:
    print("locked", flush=True)
    select.select([sys.stdin], [], [], 120)
"""


def project(tmp_path, name, backbone):
    import shutil

    work = tmp_path / name
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("artifacts/", "tests/", "bench/")):
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    params = yaml.safe_load((work / "params.yaml").read_text())
    deep_update(params, TINY)
    deep_update(params, {"dual_tower": {"backbone": backbone, "device": "cpu", "freeze_layers": 0, "max_len": 32,
                                        "calib_frac": 0.0, "train": {"max_steps": 2, "epochs": 1}},
                         "lgbm": {"n_jobs": 1}})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", work)
    return work


def cache_files(work):
    return sorted(str(p.relative_to(work / ".dvc" / "cache")) for p in (work / ".dvc" / "cache").rglob("*")
                  if p.is_file())


def test_two_model_stages_concurrently_match_sequential_dvc_repro(tmp_path, tiny_backbone, monkeypatch):
    import shutil

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sequential = project(tmp_path, "sequential", tiny_backbone)
    # the stages both model stages depend on, run once and copied (project, dvc.lock and cache): the two
    # copies differ only in how their model stages run
    run(["dvc", "repro", "folds", "teachers"], sequential)
    parallel = tmp_path / "parallel"
    shutil.copytree(sequential, parallel, symlinks=True)

    start = time.perf_counter()
    run(["dvc", "repro", "model@lgbm", "model@dual_tower"], sequential)
    seq_s = time.perf_counter() - start

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
        par_s = time.perf_counter() - start
    finally:
        holder.kill()
        holder.wait()
        if proc is not None and proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert "locked by another DVC process; retrying" in out
    assert "Running stage 'model@lgbm'" in out and "Running stage 'model@dual_tower'" in out

    lock_par = yaml.safe_load((parallel / "dvc.lock").read_text())
    lock_seq = yaml.safe_load((sequential / "dvc.lock").read_text())
    assert list(lock_par["stages"]) == list(lock_seq["stages"])
    assert lock_par == lock_seq  # every dep, param and output hash as a sequential repro writes them
    assert (parallel / "dvc.lock").read_text() == (sequential / "dvc.lock").read_text()
    assert cache_files(parallel) == cache_files(sequential)
    status = run(["dvc", "status", "model@lgbm", "model@dual_tower"], parallel).stdout  # the lock matches the workspace
    assert "up to date" in status, status

    again = run([sys.executable, "-m", "ensemble.pipeline.parallel_stages", "lgbm", "dual_tower"], parallel).stdout
    assert "Stage 'model@lgbm' didn't change, skipping" in again and "Running stage" not in again
    print(f"\nsequential dvc repro {seq_s:.1f} s, parallel_stages (waiting for the lock first) {par_s:.1f} s")
