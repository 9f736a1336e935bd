"""Progress that suits where it runs: a live tqdm bar in a terminal; in a log (CI, nohup, a
notebook's captured output) no bar redraws, only a few summary lines (per fold, per epoch)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

from tqdm.auto import tqdm

#: how many quiet() blocks are open (a count, not a flag: they nest, and threads a block starts see it too)
_quiet = 0


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Inside: no summary lines and no bars from this package (a library caller such as ensemble.Judge
    wants results, not progress). `enabled=False` changes nothing (a `verbose` switch)."""
    global _quiet
    _quiet += int(enabled)
    try:
        yield
    finally:
        _quiet -= int(enabled)


def live() -> bool:
    """Whether stderr is a terminal (ENSEMBLE_PROGRESS=bar|log forces either)."""
    forced = os.environ.get("ENSEMBLE_PROGRESS", "").strip().lower()
    if forced and forced not in ("bar", "log"):
        from ensemble.core.config import ConfigError

        raise ConfigError(f"environment ENSEMBLE_PROGRESS={forced!r}: expected bar, log or unset")
    if forced:
        return forced == "bar"
    return sys.stderr.isatty()


def no_library_bars_in_logs() -> None:
    """Outside a terminal, transformers' and huggingface_hub's own bars ("Loading weights", GGUF conversion,
    "Writing model shards") would redraw into the log: off there, and inside quiet()."""
    if _quiet or not live():
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        disable_progress_bars()


def bar(total: int, desc: str | None, enabled: bool = True, leave: bool = True) -> tqdm:
    """A live bar in a terminal; a disabled one (no output at all) anywhere else."""
    shown = enabled and desc and not _quiet and live()
    return tqdm(total=total, desc=desc, disable=not shown, dynamic_ncols=True, leave=leave)


def log(message: str) -> None:
    """One summary line, wherever it runs (log_quiet: only where no bar shows it); none inside quiet()."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def log_quiet(message: str) -> None:
    """A summary line only where no live bar is drawn."""
    if not live():
        log(message)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
