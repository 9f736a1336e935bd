"""Judge: score battles in a live process with a finished run's fitted blend, the fold models loaded once.

    from ensemble import Judge
    judge = Judge.load("artifacts")                     # params: params.yaml of the working directory
    judge.predict("prompt", "answer A", "answer B")     # {"winner_model_a": .., "winner_model_b": .., "winner_tie": ..}
    judge.predict_frame(frame)                          # id (if given) + the three columns, in input order

The same path as `python -m ensemble.submit`: the blender of artifacts/blend.json, only the models it uses,
their fold models checked as submit checks them (ensemble.pipeline.submit.fold_dirs: a stale or unfinished run is a
DataError naming the fold and what changed), fold-averaged, or merged into one model where
`<model>.merge_folds` is on. Quiet unless `verbose=True` (ensemble.core.progress.quiet).

    python -m ensemble.judge --artifacts artifacts --prompt P --a A --b B    # prints the JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core import progress
from ensemble.core.cache import RunCache
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import load_params
from ensemble.core.data import as_turns
from ensemble.core.errors import DataError
from ensemble.core.formats import TEXT_COLUMNS
from ensemble.core.predictions import proba_frame
from ensemble.models import is_registered
from ensemble.models.base import BaseModel
from ensemble.pipeline.submit import blend_models, fold_average, fold_models, read_blender, validate_submission

#: the battle load() predicts once, so that networks built on first use (the LLM's replicas) are built there
WARM_UP = ("Which answer is better?", "This one.", "That one.")


def _turns(value, what: str) -> list[str]:
    """A cell as a turn list: a string is one turn; a list (tuple, array) of strings is the turns."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(t, str) for t in value):
        return as_turns(list(value))
    raise DataError(f"{what}: {type(value).__name__} {str(value)[:60]!r}; expected a string or a list of strings "
                    f"(the turns)")


class Judge:
    """A finished run's blend, every fold model in memory: `predict` one battle, `predict_frame` many."""

    def __init__(self, blender, models: dict[str, list[BaseModel]], cache: RunCache, verbose: bool = False):
        self.blender, self.models, self.cache, self.verbose = blender, models, cache, verbose
        #: stores holding the models' own state (backbone digests), kept; any other store holds per-text
        #: entries (features, frozen states) of the battles judged: emptied after each call, so a long-lived
        #: Judge does not grow with every battle it sees
        self._kept_stores = set(cache.sizes())

    @classmethod
    def load(cls, artifacts: str | Path = "artifacts", params: str | Path | dict | None = None,
             check_code: bool = True, verbose: bool = False, warm: bool = True) -> Judge:
        """The run under `artifacts`, its fold models checked against `params` (a params.yaml path or its
        mapping; default: params.yaml of the working directory), as submit checks them. `check_code=False`
        accepts folds trained by other code (submit --skip-code-check). `warm` predicts one battle here, so
        the first call costs what later ones do."""
        artifacts = Path(artifacts)
        params = params if isinstance(params, dict) else load_params() if params is None else load_params(params)
        with progress.quiet(not verbose):
            blender = read_blender(artifacts)
            used = blender.used_models()
            elsewhere = [name for name in used if not is_registered(name)]
            if elsewhere:
                raise DataError(f"{artifacts / 'blend.json'}: blends model(s) from elsewhere "
                                f"({', '.join(elsewhere)}): only their predictions of fixed files "
                                f"(artifacts/test/<name>.parquet) exist, so new battles cannot be judged; refit the "
                                f"blend without them (blend.models) or use python -m ensemble.submit "
                                f"--reuse-test-predictions")
            cache = RunCache()  # shared by every model and fold, as in submit
            models = {name: list(fold_models(artifacts, name, params, check_code, cache)) for name in used}
            judge = cls(blender, models, cache, verbose)
        if warm:
            judge.predict(*WARM_UP)
        return judge

    def predict(self, prompt: str | Sequence[str], response_a: str | Sequence[str],
                response_b: str | Sequence[str]) -> dict[str, float]:
        """{winner_model_a, winner_model_b, winner_tie} of one battle; each text a string or a list of turns."""
        row = {col: _turns(value, col) for col, value in zip(TEXT_COLUMNS, (prompt, response_a, response_b))}
        proba = self._proba(pd.DataFrame([{"id": "0", **row}]))
        return {col: float(v) for col, v in zip(TARGETS, proba[0])}

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """id (where `frame` has one) and the three probability columns, one row per battle in input order;
        text cells are strings or lists of turns."""
        if not isinstance(frame, pd.DataFrame):
            raise DataError(f"predict_frame: a {type(frame).__name__}; expected a pandas DataFrame with columns "
                            f"{', '.join(TEXT_COLUMNS)} (and optionally id)")
        missing = [col for col in TEXT_COLUMNS if col not in frame]
        if missing:
            raise DataError(f"predict_frame: missing column(s) {', '.join(missing)}; the frame has "
                            f"{', '.join(map(str, frame.columns))}; expected {', '.join(TEXT_COLUMNS)} "
                            f"(and optionally id)")
        ids = frame["id"].astype(str).tolist() if "id" in frame else [str(i) for i in range(len(frame))]
        battles = pd.DataFrame({"id": ids})
        for col in TEXT_COLUMNS:
            battles[col] = [_turns(v, f"predict_frame: row {i}, column {col}") for i, v in enumerate(frame[col])]
        out = proba_frame(ids, self._proba(battles))
        if "id" not in frame:
            return out.drop(columns="id")
        out["id"] = frame["id"].to_numpy()  # the caller's ids as given (numbers stay numbers)
        return out

    def _proba(self, battles: pd.DataFrame) -> np.ndarray:
        if not len(battles):
            return np.zeros((0, 3))
        try:
            with progress.quiet(not self.verbose):
                proba = blend_models(self.blender, battles, lambda name: fold_average(self.models[name], battles))
        finally:
            for name in set(self.cache.sizes()) - self._kept_stores:
                self.cache.clear(name)
        validate_submission(proba_frame(battles["id"], proba), list(battles["id"]))
        return proba


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.judge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--params", default="params.yaml", help="the fold models are checked against its model sections")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--a", required=True, help="response A")
    ap.add_argument("--b", required=True, help="response B")
    ap.add_argument("--skip-code-check", action="store_true", help="accept fold models trained by other code")
    ap.add_argument("--verbose", action="store_true", help="progress lines on stderr")
    args = ap.parse_args(argv)
    judge = Judge.load(args.artifacts, args.params, not args.skip_code_check, args.verbose, warm=False)
    print(json.dumps(judge.predict(args.prompt, args.a, args.b)))
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
