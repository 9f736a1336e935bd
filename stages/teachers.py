"""DVC stage: each model's teachers, one small file per model (artifacts/teachers/<name>.json) that the
model's stage depends on, so a student reruns when its teachers' params, code, libraries, weights or files change,
and a model without teachers never does. It also refuses bad `distill` params (exit 2) before any stage
trains.

    python stages/teachers.py artifacts/teachers
"""

import argparse
import sys
from pathlib import Path

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import load_params
from ensemble.core.io import write_json
from ensemble.models import REGISTRY
from ensemble.pipeline.distill import TEACHER_DIR, check_teachers, teacher_parts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for <model>.json, one per registered model")
    ap.add_argument("--teachers", type=Path, default=TEACHER_DIR, help="folder of teachers from elsewhere")
    ap.add_argument("--unlabelled", type=Path, default=Path("artifacts/prepared/unlabelled.parquet"))
    args = ap.parse_args()
    params = load_params()
    plans = {}
    for name in REGISTRY:
        cfg = check_teachers(name, params, args.teachers, args.unlabelled.is_file())
        plans[name] = {"distill": vars(cfg), "teachers": {t: teacher_parts(t, params, args.teachers)
                                                          for t in cfg.teachers}}
    for name, plan in plans.items():
        write_json(args.out / f"{name}.json", plan)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
