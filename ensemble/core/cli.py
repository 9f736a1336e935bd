"""Entry-point wrapper: user errors become one clear message and exit code 2, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from ensemble.core.errors import UserError


def fail_cleanly(main: Callable[[], int]) -> int:
    try:
        from ensemble.core import progress

        progress.live()  # a bad ENSEMBLE_PROGRESS is refused before any work
        return main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        stage = os.environ.get("DVC_STAGE")
        if stage:  # dvc removed the stage's (non-persistent) outputs before running it
            print(f"hint: fix it and rerun `dvc repro`; until then `dvc checkout {stage}` brings back the "
                  f"stage's last good outputs", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
