"""DDP proven without GPUs: `accelerate launch --multi_gpu --num_processes 2 stages/oof.py <model>`, the command
of docs/gpus.md, on CPU (gloo) for the dual tower (fine-tuning a tiny DebertaV2) and the LLM (tiny Llama, 4-bit NF4 +
LoRA). Both ranks end each fold with identical trainable weights after training on disjoint batches, only
rank 0 writes artifacts while rank 1 waits, the OOF file is valid, and (the dual tower) a rerun through dvc.yaml's
command reuses every fold.

tests/ddp_traced.py runs the stage with each process logging its batch digests and final weight digest, and
every atomic write with the writer's rank (the library itself has no test hook)."""

import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, battle_frame, tiny_config
from test_resume import leftovers, make_project, stage_env

from ensemble.core.targets import DistillConfig

pytestmark = pytest.mark.slow  # two processes, each importing torch and transformers: ~30 s a test
TARGETS = ["winner_model_a", "winner_model_b", "winner_tie"]
N_SPLITS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work, name: str, trace, via_env: bool = False) -> str:
    """docs/gpus.md's command; via_env: `python stages/oof.py <name>` (dvc.yaml's command) with
    ENSEMBLE_LAUNCH_<NAME> set, which relaunches itself under the same accelerate command."""
    launcher = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    env = stage_env(DDP_TRACE=str(trace), CUDA_VISIBLE_DEVICES="")
    if via_env:  # untraced: dvc.yaml's own command
        env[f"ENSEMBLE_LAUNCH_{name.upper()}"] = " ".join(launcher)
        cmd = ["python", str(ROOT / "stages" / "oof.py"), name]
    else:
        cmd = [*launcher, str(ROOT / "tests" / "ddp_traced.py"), name]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def check_ddp_stage(tmp_path, name: str, params: dict, frame: pd.DataFrame, rerun: bool = True) -> None:
    """Launch the stage in 2 processes and check the run; rerun: launch it again through dvc.yaml's own
    command (ENSEMBLE_LAUNCH_<NAME>) and check every fold is reused."""
    work = make_project(tmp_path / "project", params, frame, n_splits=N_SPLITS)
    trace = tmp_path / "trace"
    start = time.perf_counter()
    out = launch(work, name, trace)
    first = time.perf_counter() - start

    runs = {r: [json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert len(runs[0]) == len(runs[1]) == N_SPLITS  # one training loop per fold in each process
    for a, b in zip(runs[0], runs[1]):
        assert a["world_size"] == b["world_size"] == 2
        assert a["weights"] == b["weights"]  # gradients were all-reduced: identical trainable weights
        assert a["batches"] and b["batches"] and not set(a["batches"]) & set(b["batches"])  # own shards
    assert runs[0][0]["weights"] != runs[0][1]["weights"]  # two folds, two different models

    writes = [line.split("\t") for line in (trace / "writes.tsv").read_text().splitlines()]
    assert {rank for rank, _ in writes} == {"0"}  # only rank 0 writes artifacts
    written = {path for _, path in writes}
    assert {f"artifacts/oof/{name}.parquet", f"artifacts/test/{name}.parquet"} <= written
    assert {f"artifacts/models/{name}/fold_{k}/done.json" for k in range(N_SPLITS)} <= written
    for k in range(N_SPLITS):
        assert f"[rank 1] waiting for rank 0: fold {k} saved and predicted" in out
    assert out.count(f"[{name}] fold 0: training on") == 2  # both processes train each fold

    oof = pd.read_parquet(work / "artifacts" / "oof" / f"{name}.parquet")
    folds = pd.read_parquet(work / "artifacts" / "folds.parquet")
    assert (list(oof["id"]) == list(frame["id"])
            and list(oof["fold"]) == list(folds.set_index("id").loc[oof["id"], "fold"]))
    proba = oof[TARGETS].to_numpy()
    assert np.isfinite(proba).all() and np.allclose(proba.sum(1), 1, atol=1e-6)
    assert leftovers(work / "artifacts") == []
    if not rerun:
        print(f"\n{name} DDP, 2 processes on CPU: first run {first:.1f} s")
        return

    start = time.perf_counter()
    again = launch(work, name, tmp_path / "trace2", via_env=True)
    assert f"[{name}] relaunching: accelerate launch" in again
    assert f"[rank 1] waiting for rank 0: fold {N_SPLITS - 1} saved and predicted" in again
    rerun = time.perf_counter() - start
    for k in range(N_SPLITS):
        assert f"[{name}] fold {k}: already done, reusing" in again
    assert "training on" not in again
    pd.testing.assert_frame_equal(pd.read_parquet(work / "artifacts" / "oof" / f"{name}.parquet"), oof)
    print(f"\n{name} DDP, 2 processes on CPU: first run {first:.1f} s, rerun {rerun:.1f} s")


def test_dual_tower_ddp_two_processes_fine_tuning(tmp_path, tiny_backbone):
    params = {"dual_tower": {"backbone": tiny_backbone, "max_len": 32, "device": "cpu", "freeze_layers": 0,
                             "use_features": False, "calib_frac": 0.0, "infer_max_tokens": 512,
                             "train": {"max_steps": 3, "batch_size": 4, "precision": "fp32", "warmup_ratio": 0.0}}}
    check_ddp_stage(tmp_path, "dual_tower", params, battle_frame(48, seed=4))


def test_llm_ddp_two_processes_4bit_lora(tmp_path, tiny_llm):
    config = tiny_config(tiny_llm, quantization="4bit", calib_frac=0.0, swap_augment=False, swap_tta=False,
                         train={"max_steps": 3, "batch_size": 4, "lr": 5e-3, "seed": 0, "precision": "fp32"})
    # no rerun: the relaunch through dvc.yaml's command and the reuse of finished folds under DDP are the
    # runner's, not the model's (checked with the dual tower above); the LLM's rank-0 decisions on kept work
    # are checked by test_ddp_two_processes_share_the_llm_inference_and_follow_rank_0_on_kept_work
    check_ddp_stage(tmp_path, "llm", {"llm": config}, battle_frame(48, seed=4), rerun=False)


def test_ddp_device_must_be_listed(monkeypatch):
    """Under DDP process i trains on cuda:i; an LLM `devices` list without it is an error, not a silent move."""
    import torch

    from ensemble.core.config import ConfigError
    from ensemble.nn.distributed import train_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert train_device([torch.device("cpu")]) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_device([torch.device("cuda:0"), torch.device("cuda:1")]) == torch.device("cuda:1")
    assert train_device([torch.device("cuda:0")], listed=False) == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="cuda:1"):
        train_device([torch.device("cuda:0")])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert train_device([torch.device("cuda:0")]) is None


# ----------------------------------------------------------------------------- two gloo processes, one launch

def _spawned(rank: int, work: str, fold: str, teacher: dict) -> None:
    """One of two processes (torch.multiprocessing, gloo): predicts with the saved LLM fold, then builds a
    student's teachers in a folder of its own, which holds a kept teacher fit on rank 1 only."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    import torch

    from ensemble.core.folds import attach_folds
    from ensemble.models.llm.model import LLMModel
    from ensemble.nn import distributed as dist
    from ensemble.pipeline.distill import Teachers

    torch.set_num_threads(1)
    work = Path(work)
    frame = pd.read_parquet(work / "frame.parquet")
    model = LLMModel.load(fold)
    rows = []
    net = model._replicas.get(torch.device("cpu"))
    net.register_forward_hook(lambda mod, args, kwargs, out: rows.append(len(out)), with_kwargs=True)
    proba = model.predict_proba(frame)
    train = pd.read_parquet(work / "train.parquet")
    fold_of = attach_folds(train, pd.read_parquet(work / "folds.parquet"))
    cfg = DistillConfig(teachers=["llm"], mode="leaky")
    teachers = Teachers("lgbm", cfg, {"llm": teacher}, train, fold_of, work / f"teachers{rank}", write=dist.is_main())
    np.savez(work / f"rank{rank}.npz", proba=proba, rows=sum(rows), soft=np.stack(teachers.soft))
    dist.finish()


def test_ddp_two_processes_share_the_llm_inference_and_follow_rank_0_on_kept_work(tmp_path, tiny_llm, monkeypatch):
    """Two processes (gloo): each runs the LLM on its own share of the rows and both return all rows, equal to
    one process's predictions; a teacher fit kept on rank 1's disk only (rank 0 has none) is refitted by both,
    as rank 0 decides, instead of rank 1 skipping it and rank 0 waiting alone in DDP until the timeout."""
    import shutil

    import torch.multiprocessing as mp

    from ensemble.core.folds import attach_folds, make_folds
    from ensemble.models.llm.model import LLMModel
    from ensemble.pipeline.distill import Teachers

    config = tiny_config(tiny_llm, calib_frac=0.0, infer_max_rows=4,
                         train={"max_steps": 2, "batch_size": 4, "lr": 5e-3, "seed": 0})
    LLMModel(config).fit(battle_frame(24, 0)).save(tmp_path / "fold")
    frame = battle_frame(30, 1).sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame.to_parquet(tmp_path / "frame.parquet")
    single = LLMModel.load(tmp_path / "fold").predict_proba(frame)

    train = battle_frame(24, 2)
    folds = make_folds(train, 2, seed=0)
    train.to_parquet(tmp_path / "train.parquet")
    folds.to_parquet(tmp_path / "folds.parquet")
    teacher = tiny_config(tiny_llm, quantization="none", calib_frac=0.0, swap_augment=False, swap_tta=False,
                          train={"max_steps": 2, "batch_size": 4, "lr": 5e-3, "seed": 0, "precision": "fp32"})
    Teachers("lgbm", DistillConfig(teachers=["llm"], mode="leaky"), {"llm": teacher}, train,
             attach_folds(train, folds), tmp_path / "teachers1")  # kept on rank 1's disk only
    kept = sorted(p.name for p in (tmp_path / "teachers1" / "llm").iterdir())

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("ENSEMBLE_DDP_TIMEOUT_S", "60")  # a process left alone in a collective fails, not hangs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    start = time.perf_counter()
    mp.spawn(_spawned, args=(str(tmp_path), str(tmp_path / "fold"), teacher), nprocs=2, join=True)
    seconds = time.perf_counter() - start

    out = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    n_rows = 2 * len(frame)  # with swap_tta each battle and its twin
    assert out[0]["rows"] > 0 and out[1]["rows"] > 0 and out[0]["rows"] + out[1]["rows"] == n_rows
    for r in (0, 1):
        np.testing.assert_allclose(out[r]["proba"], single, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out[0]["soft"], out[1]["soft"])
    assert sorted(p.name for p in (tmp_path / "teachers0" / "llm").iterdir()) == kept  # rank 0 fitted and wrote
    shutil.rmtree(tmp_path / "teachers0")
    print(f"\n2 spawned gloo processes: {seconds:.1f} s")
