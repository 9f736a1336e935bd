"""`make gpu-check`'s scaled-down pipeline on CUDA, measured beside the plan's prediction.

    python bench/gpu_check.py [--rows 400,200] [--folds 2] [--set llm.max_len=1024] [--device cuda]

params.yaml with profiles/gpu-smoke.yaml laid over it (and --set keys) on synthetic demo battles
(ensemble.demo): each GPU model stage (the dual tower, the 4-bit + LoRA llm) runs the OOF stage
(stages/oof.py) in its own process, once per precision the GPU runs natively (fp16 always, bf16 from
compute capability 8.0), and, with two GPUs, the llm once more in two processes (torchrun: DDP). Each
run prints, beside `python -m ensemble.plan`'s prediction for the same params, rows and GPU:

    wall seconds of the stage, tokens/s (the plan's token count of the stage over the measured
    seconds), and the peak of torch.cuda.max_memory_allocated (the plan's peak adds the CUDA context).

Without CUDA it prints one line and exits 0; `--device cpu` runs the same steps on the CPU (what the CPU
tests do, with tiny models, to check the script itself). Figures go to stdout and `--out`/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "gpu-smoke.yaml"
PEAK_FILE = "peak_memory_rank{rank}.json"
#: the named machines of the plan (ensemble.plan.hardware), recognised from the CUDA device's name
PLAN_HARDWARE = (("H100", "h100-80g"), ("A100", "a100-80g"), ("T4", "kaggle-2xt4"))


def cuda_ready() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_hardware_name() -> tuple[str, str]:
    """(the plan's machine for this GPU, a note when it is only the nearest one)."""
    import torch

    props = torch.cuda.get_device_properties(0)
    for marker, name in PLAN_HARDWARE:
        if marker in props.name:
            if name == "a100-80g" and props.total_memory < 60 * 2**30:
                return "a100-40g", ""
            return name, ""
    return "h100-80g", f"{props.name} is not a machine of the plan: planned as an H100"


def native_bf16() -> bool:
    import torch

    from ensemble.nn.precision import native_bf16 as native

    return native(torch.device("cuda:0"))


def variants(device: str, n_gpus: int) -> list[tuple[str, str, list[str]]]:
    """(label, model, --set keys) of every run: each model at each precision the device runs natively."""
    if device == "cpu":
        cpu = ["dual_tower.device=cpu", "dual_tower.train.precision=fp32", "llm.devices=[cpu]",
               "llm.compute_dtype=fp32", "llm.train.precision=fp32"]
        return [("dual_tower fp32", "dual_tower", cpu), ("llm fp32", "llm", cpu)]
    precisions = ["fp16"] + (["bf16"] if native_bf16() else [])
    runs = []
    for p in precisions:
        runs.append((f"dual_tower {p}", "dual_tower", [f"dual_tower.train.precision={p}"]))
    for p in precisions:
        runs.append((f"llm 4-bit {p}", "llm", [f"llm.compute_dtype={p}", f"llm.train.precision={p}"]))
    if n_gpus >= 2:
        p = precisions[-1]
        two = ["llm.devices=[cuda:0, cuda:1]", f"llm.compute_dtype={p}", f"llm.train.precision={p}"]
        runs.append((f"llm 4-bit {p}, 2 processes (DDP)", "llm", two))
    return runs


def write_params(folder: Path, sets: list[str]) -> None:
    """params.yaml of one run: the project's with the smoke profile and `sets` applied as a user applies
    a profile (python -m ensemble.profile), checked before it is written."""
    from ensemble.pipeline.profile import apply_profile

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "params.yaml", folder / "params.yaml")
    apply_profile(PROFILE, sets, folder / "params.yaml")


def write_data(work: Path, n_train: int, n_test: int, n_folds: int) -> Path:
    """Demo battles prepared as the prepare and folds stages write them, under work/artifacts."""
    from ensemble.core.data import save_battles
    from ensemble.core.folds import make_folds
    from ensemble.demo import make_demo, write_csv

    art = work / "artifacts"
    train_csv, test_csv = work / "demo_train.csv", work / "demo_test.csv"
    train, test = make_demo(n_train, n_test, seed=0)
    write_csv(train_csv, train)
    write_csv(test_csv, test)
    from ensemble.core.data import read_battles

    train = read_battles(train_csv, labels=True, verbose=False)
    test = read_battles(test_csv, labels=False, drop_duplicates=False, verbose=False)
    save_battles(art / "prepared" / "train.parquet", train)
    save_battles(art / "prepared" / "test.parquet", test)
    make_folds(train, n_folds, seed=0).to_parquet(art / "folds.parquet")
    return art


def stage_command(model: str, art: Path, out: Path, processes: int) -> list[str]:
    args = [str(Path(__file__).resolve()), "--stage", model, "--data", str(art), "--out", str(out)]
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                *args]
    return [sys.executable, *args]


def run_stage(model: str, art: Path, out: Path) -> int:
    """One process of a run (under torchrun: one rank): the OOF stage's main, then this process's peak
    CUDA memory written beside the run's outputs."""
    sys.path.insert(0, str(ROOT / "stages"))
    import oof as oof_stage  # stages/oof.py

    sys.argv = ["stages/oof.py", model, "--train", str(art / "prepared" / "train.parquet"),
                "--test", str(art / "prepared" / "test.parquet"), "--folds", str(art / "folds.parquet"),
                "--out", str(out)]
    rc = oof_stage.main()
    import torch

    peak = {}
    if torch.cuda.is_available():
        peak = {f"cuda:{i}": torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())}
    rank = int(os.environ.get("RANK", "0"))
    (out / PEAK_FILE.format(rank=rank)).write_text(json.dumps(peak), encoding="utf-8")
    return rc


def planned(folder: Path, art: Path, model: str, hardware: str) -> dict:
    """The plan's training seconds, tokens and peak GiB a device for `model` under this run's params."""
    from ensemble import plan

    ns = argparse.Namespace(hardware=hardware, infer_hardware=None, params=folder / "params.yaml", profile=None,
                            sets=[], artifacts=art, rows=None, tokens=None, sample=1000, mfu=None)
    stages, _, _, _ = plan.build_plan(ns)
    st = next(s for s in stages if s.model == model)
    tokens = sum(p.tokens for p in st.passes if p.where == "train")
    return {"seconds": st.seconds["train"], "tokens": tokens, "peak_gib": st.peak("train")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="400,200", help="TRAIN,TEST demo battles")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="one more key over the smoke profile, for every run")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check",
                        help="the runs, their logs and gpu_check.json (emptied first)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # one process of a run (see run_stage)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, args.data, args.out)
    if args.device == "cuda" and not cuda_ready():
        print("gpu-check: skipped, no CUDA device here (torch.cuda.is_available() is False)")
        return 0
    import torch

    n_train, n_test = (int(x) for x in args.rows.split(","))
    work = args.out
    if work.exists():  # a rerun must train again, not reuse the last run's folds
        shutil.rmtree(work)
    work.mkdir(parents=True)
    art = write_data(work, n_train, n_test, args.folds)
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    hardware, note = plan_hardware_name() if args.device == "cuda" else ("cpu", "")
    if args.device == "cuda":
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(n_gpus))
        print(f"gpu-check on {n_gpus} x {names}; plan: --hardware {hardware}" + (f" ({note})" if note else ""))
    print(f"{n_train} train / {n_test} test demo battles, {args.folds} folds, profile {PROFILE.name}")
    results = []
    for i, (label, model, sets) in enumerate(variants(args.device, n_gpus)):
        folder = work / f"run{i}"
        write_params(folder, [*sets, *args.sets])
        processes = 2 if "DDP" in label else 1
        out = folder / "artifacts"
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        done = subprocess.run(stage_command(model, art, out, processes), cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
        (folder / "run.log").write_text(done.stdout, encoding="utf-8")
        if done.returncode != 0:
            print(f"{label}: FAILED (exit {done.returncode}); the last lines of {folder / 'run.log'}:")
            print("\n".join(done.stdout.splitlines()[-25:]))
            results.append({"run": label, "failed": done.returncode})
            continue
        peaks: dict[str, float] = {}
        for path in out.glob(PEAK_FILE.format(rank="*")):
            for dev, gib in json.loads(path.read_text(encoding="utf-8")).items():
                peaks[dev] = max(peaks.get(dev, 0.0), gib)
        plan = planned(folder, art, model, hardware)
        peak = max(peaks.values()) if peaks else float("nan")
        row = {"run": label, "seconds": seconds, "tokens_per_s": plan["tokens"] / seconds,
               "peak_gib": peak, "plan_seconds": plan["seconds"], "plan_tokens_per_s":
               plan["tokens"] / plan["seconds"] if plan["seconds"] else float("nan"), "plan_peak_gib": plan["peak_gib"]}
        results.append(row)
        print(f"{label:34} {seconds:7.1f} s (plan {plan['seconds']:7.1f} s)  {row['tokens_per_s']:10,.0f} tokens/s "
              f"(plan {row['plan_tokens_per_s']:10,.0f})  peak {peak:6.2f} GiB (plan {plan['peak_gib']:6.2f}, "
              f"with the CUDA context)")
    (work / "gpu_check.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"figures: {work / 'gpu_check.json'}, logs: {work}/run*/run.log")
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
