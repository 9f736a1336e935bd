"""The plan's CPU times against a finished run's: `python bench/plan_calibrate.py RUN_DIR [--fit dual_tower]`.

RUN_DIR is a bench_real run folder (params.yaml, artifacts/prepared, seconds.json with each stage's wall seconds).
The share of this CPU's peak is fitted on one stage (--fit dual_tower or llm: share = predicted seconds at 100%
of peak / measured seconds) or on both (--fit both: the geometric mean of the two stages' shares, which makes
their predicted/measured ratios reciprocal); the stages are then predicted with that share and reported as
predicted / measured. --share predicts every stage with a given share instead (a run the share was not fitted
on). The llm's 4-bit matmuls run in bf16 on CPUs with AVX512-BF16, planned at that instruction set's peak.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ensemble import plan
from ensemble.plan.hardware import this_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--fit", default="both", choices=["both", "dual_tower", "llm"],
                        help="the stage(s) whose measured time fixes the share")
    parser.add_argument("--share", type=float, help="predict with this share instead of fitting one (a held-out check)")
    parser.add_argument("--sample", type=int, default=1000)
    args = parser.parse_args(argv)
    measured = json.loads((args.run / "seconds.json").read_text(encoding="utf-8"))
    ns = argparse.Namespace(hardware="cpu", infer_hardware=None, params=args.run / "params.yaml", profile=None,
                            sets=[], artifacts=args.run / "artifacts", rows=None, tokens=None, sample=args.sample,
                            mfu=1.0)
    stages, hw, _, _ = plan.build_plan(ns)
    cpu = this_cpu()
    print(f"CPU peak: {cpu.cores} cores x {cpu.ghz:.3f} GHz x {cpu.flops_per_cycle} fp32 FLOPs/cycle "
          f"({cpu.how}) = {hw.peak_tflops * 1000:.0f} GFLOPS fp32, {hw.cpu_bf16_tflops * 1000:.0f} bf16")
    at_peak = {st.model: st.seconds["train"] for st in stages}
    fitted = ["dual_tower", "llm"] if args.fit == "both" else [args.fit]
    if args.share is None:
        shares = [at_peak[m] / measured[m] for m in fitted]
        share = math.prod(shares) ** (1 / len(shares))
        each = ", ".join(f"{m} {at_peak[m]:.1f} s at peak / {measured[m]:.1f} s measured = {s:.3f}"
                         for m, s in zip(fitted, shares))
        print(f"share fitted on {args.fit}: {each}; share {share:.3f}")
    else:
        share = args.share
        print(f"share given: {share:.3f}")
    for st in stages:
        flops = sum(p.flops for p in st.passes if p.where == "train")
        predicted = at_peak[st.model] / share if st.model != "lgbm" else st.seconds["train"]
        got = measured.get(st.model)
        ratio = f"{predicted / got:.2f}" if got else "-"
        print(f"{st.model:11} FLOPs {flops:.3g}  predicted {predicted:8.1f} s  measured {got or 0:8.1f} s  "
              f"predicted/measured {ratio}  (share needed {at_peak[st.model] / got if got and flops else 0:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
