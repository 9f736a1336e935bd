"""Entry-point wrapper: user errors become one clear message and exit code 2, not a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from .errors import UserError


def fail_cleanly(main: Callable[[], int]) -> int:
    try:
        return main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
