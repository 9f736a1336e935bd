"""Run several DVC stages at the same time (the dual tower on cuda:0 and the LLM on cuda:1), leaving
`dvc.lock` and the cache as a sequential `dvc repro` would:

    python -m ensemble.pipeline.parallel_stages dual_tower llm      (the stages model@dual_tower and model@llm)

1. `dvc repro` of the stages they depend on (one call, sequential, under DVC's lock);
2. each named stage that `dvc status` reports changed: its non-persistent outputs removed (as `dvc repro`
   does), then its command from dvc.yaml started; all of them run concurrently, no DVC lock held;
3. `dvc commit --force` of the stages that succeeded, in dvc.yaml order, in one call: DVC hashes their deps
   and outputs, caches the outputs and writes their dvc.lock entries.

Concurrent `dvc repro <stage>` calls in one repository fail with "Unable to acquire lock"; here only steps 1
and 3 take the lock, and a lock held by another DVC process is waited for (retried), not an error.
Exit 0 when every stage succeeded, 1 otherwise (the failed stages are not committed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LOCK_MESSAGE = "Unable to acquire lock"


def dvc(args: list[str], cwd: Path, wait_s: float) -> None:
    """Run a dvc command, retrying while another DVC process holds the repository lock."""
    deadline = time.monotonic() + wait_s
    while True:
        proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            sys.stdout.write(proc.stdout)
            return
        if LOCK_MESSAGE in out and time.monotonic() < deadline:
            print(f"dvc {args[0]}: the repository is locked by another DVC process; retrying", flush=True)
            time.sleep(1.0)
            continue
        raise SystemExit(f"error: `dvc {' '.join(args)}` failed ({proc.returncode}):\n{out[-3000:]}")


def plan(root: Path, names: list[str]) -> tuple[list[str], list]:
    """(upstream stage names, the stages `names` in dvc.yaml order)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = {s.addressing: s for s in repo.index.stages}
        names = [n if n in stages or f"model@{n}" not in stages else f"model@{n}" for n in names]  # lgbm: model@lgbm
        unknown = [n for n in names if n not in stages]
        if unknown:
            raise SystemExit(f"error: no stage {unknown} in dvc.yaml (stages: {', '.join(stages)})")
        upstream = []
        for n in names:
            for s in repo.stage.collect(n, with_deps=True):
                if s.addressing not in names and s.addressing not in upstream:
                    upstream.append(s.addressing)
        order = list(stages)
        return upstream, [stages[n] for n in sorted(names, key=order.index)]


def changed(root: Path, names: list[str]) -> dict[str, bool]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {n: bool(repo.status(targets=[n])) for n in names}


def run(names: list[str], root: Path = Path("."), wait_s: float = 600.0) -> int:
    root = root.resolve()
    upstream, targets = plan(root, names)
    if upstream:
        print(f"dvc repro {' '.join(upstream)}  (upstream of {', '.join(names)})", flush=True)
        dvc(["repro", *upstream], root, wait_s)
    todo = changed(root, [s.addressing for s in targets])
    procs = {}
    for stage in targets:
        name = stage.addressing
        if not todo[name]:
            print(f"Stage '{name}' didn't change, skipping", flush=True)
            continue
        for out in stage.outs:  # as `dvc repro`: outputs go first, persistent ones stay (resumable folds)
            path = Path(out.fs_path)
            if not out.persist and path.is_dir():
                shutil.rmtree(path)
            elif not out.persist and path.exists():
                path.unlink()
        print(f"Running stage '{name}':\n> {stage.cmd}", flush=True)
        procs[name] = subprocess.Popen(stage.cmd, shell=True, cwd=root, env=os.environ.copy())
    failed = [n for n, p in procs.items() if p.wait() != 0]
    done = [s.addressing for s in targets if s.addressing in procs and s.addressing not in failed]
    if done:
        dvc(["commit", "--force", *done], root, wait_s)
        print(f"committed {', '.join(done)} to dvc.lock and the cache", flush=True)
    if failed:
        print(f"error: stage(s) {', '.join(failed)} failed; fix and rerun (finished folds are kept)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", help="dvc.yaml stages to run concurrently, e.g. dual_tower llm")
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a DVC lock held elsewhere")
    args = ap.parse_args(argv)
    return run(args.stages, Path("."), args.wait)


if __name__ == "__main__":
    sys.exit(main())
