"""Per-stage wall times of `make repro` (`dvc repro` on the embedded default) from a fresh clone: each run
clones a commit into a new folder and runs the pipeline one stage at a time, in `dvc repro`'s order, with
this checkout's virtual environment (so `make setup` is not timed).

    python bench/bench_repro.py                          # HEAD, one run
    python bench/bench_repro.py --runs 3                 # medians of three fresh clones
    python bench/bench_repro.py 3a01204 HEAD             # two commits, alternating run by run

It prints each stage's seconds (the median over runs) and the total, with `dvc metrics show`'s figures of
the last run, and writes bench/out/repro/<commit>.json. `dvc repro --single-item` per stage adds DVC's own
start (~1 s a stage) to each figure, so the total is a little above one `dvc repro`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "repro"


def environment(clone: Path) -> dict:
    """The Makefile's environment, with this checkout's venv and the clone's own package on the path."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(clone)  # the venv's editable install points at this checkout, not the clone
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", DVC_NO_ANALYTICS="1")
    return env


def stages_in_order(clone: Path, env: dict) -> list[str]:
    """Every stage of the clone's dvc.yaml, dependencies first (DVC's graph points from a stage to the
    stages it depends on)."""
    code = ("import networkx as nx; from dvc.repo import Repo\n"
            "with Repo('.') as repo:\n"
            "    graph = repo.index.graph\n"
            "    print('\\n'.join(s.addressing for s in reversed(list(nx.topological_sort(graph)))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def one_run(commit: str, log: Path, keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_repro_") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        env = environment(clone)
        # as `make setup` does: the project's bytecode compiled once (PYTHONDONTWRITEBYTECODE machines)
        subprocess.run([sys.executable, "-m", "compileall", "-q", "ensemble"], cwd=clone, check=True,
                       stdout=subprocess.DEVNULL)
        seconds = {}
        with log.open("a", encoding="utf-8") as out:
            for name in stages_in_order(clone, env):
                start = time.perf_counter()
                subprocess.run(["dvc", "repro", "--single-item", name], cwd=clone, env=env, stdout=out,
                               stderr=subprocess.STDOUT, check=True)
                seconds[name] = round(time.perf_counter() - start, 1)
                print(f"  {name}: {seconds[name]:.1f} s", flush=True)
        metrics = json.loads((clone / "metrics.json").read_text(encoding="utf-8"))
        if keep is not None:  # the run's dvc.lock and metrics.json, e.g. to commit them
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("dvc.lock", "metrics.json"):
                (keep / name).write_bytes((clone / name).read_bytes())
    return {"seconds": seconds, "total": round(sum(seconds.values()), 1), "metrics": metrics}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("commit", nargs="*", default=["HEAD"], help="commits to time (default HEAD)")
    ap.add_argument("--runs", type=int, default=1, help="fresh clones per commit")
    ap.add_argument("--keep", type=Path, help="copy each run's dvc.lock and metrics.json here (under <commit>/)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    shas = [subprocess.run(["git", "rev-parse", "--short", c], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.strip() for c in args.commit]
    runs: dict[str, list[dict]] = {sha: [] for sha in shas}
    for i in range(args.runs):
        for sha in shas:  # alternating, so a slow spell of the machine hits every commit alike
            print(f"run {i + 1}/{args.runs}, commit {sha}", flush=True)
            runs[sha].append(one_run(sha, OUT / f"{sha}.log", args.keep / sha if args.keep else None))
    for sha, done in runs.items():
        names = list(done[0]["seconds"])
        median = {n: statistics.median(r["seconds"][n] for r in done) for n in names}
        total = statistics.median(r["total"] for r in done)
        (OUT / f"{sha}.json").write_text(json.dumps({"commit": sha, "runs": done, "median_seconds": median,
                                                     "median_total": total}, indent=1) + "\n", encoding="utf-8")
        print(f"\ncommit {sha}: median of {len(done)} fresh clone(s)")
        for n in names:
            print(f"  {n:<18} {median[n]:7.1f} s   (runs: {', '.join(str(r['seconds'][n]) for r in done)})")
        print(f"  {'total':<18} {total:7.1f} s")
        print("  metrics: " + json.dumps(done[-1]["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
