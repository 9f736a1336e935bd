"""`python -m ensemble.blend [--method NAME] [--models A B ...]`: refit the blend from the existing OOF files in
seconds (nothing is retrained), print every model and every blender cross-fitted beside the fitted one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ensemble.blend import BLENDERS, blender_class
from ensemble.blend.run import run
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import load_params


def main(argv: list[str] | None = None) -> int:
    methods = "; ".join(f"{name}: {blender_class(name).about}" for name in BLENDERS)
    ap = argparse.ArgumentParser(prog="python -m ensemble.blend", description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--models", nargs="+", help="override blend.models")
    ap.add_argument("--method", help=f"override blend.method ({methods})")
    ap.add_argument("--metrics", default="metrics.json", help="headline metrics for DVC (git-tracked)")
    args = ap.parse_args(argv)
    run(load_params(args.params), Path(args.artifacts), args.models, args.method, Path(args.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
