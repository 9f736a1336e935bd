"""DVC stage: `report.html` (scores, weights, reliability, confusion, log loss by slice of every model
and the blend) and the CSV files behind the top-level `plots` of dvc.yaml."""

import argparse
import sys
from pathlib import Path

from ensemble.core.cli import fail_cleanly
from ensemble.core.io import write_text
from ensemble.report import load_inputs, write_plots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python stages/report.py", description=__doc__)
    ap.add_argument("--train", default="artifacts/prepared/train.parquet", help="prepared training battles")
    ap.add_argument("--oof-dir", default="artifacts/oof", help="folder of <model>.parquet OOF files")
    ap.add_argument("--blend-oof", default="artifacts/blend_oof.parquet")
    ap.add_argument("--blend", default="artifacts/blend.json", help="blend weights (names the models)")
    ap.add_argument("--metrics", default="artifacts/metrics.json", help="optional: confidence intervals, extra blends")
    ap.add_argument("--models-dir", default="artifacts/models", help="holds <model>/input.json (truncation)")
    ap.add_argument("--plots-dir", default="artifacts/plots", help="CSV files for `dvc plots show`")
    ap.add_argument("--html", default="artifacts/report.html")
    args = ap.parse_args(argv)

    data = load_inputs(Path(args.train), Path(args.oof_dir), Path(args.blend_oof), Path(args.blend),
                       Path(args.metrics), Path(args.models_dir))
    from ensemble.report.html import render  # imports matplotlib: only once the inputs are known good

    for path in write_plots(data, Path(args.plots_dir)):
        print(f"wrote {path}")
    sources = {"training battles": args.train, "OOF files": f"{args.oof_dir}/<model>.parquet",
               "blended OOF": args.blend_oof, "blend weights": args.blend, "metrics": args.metrics,
               "truncation reports": f"{args.models_dir}/<model>/input.json"}
    write_text(args.html, render(data, sources))
    print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
