"""Battle data contract: read, validate and clean Kaggle LMSYS-format CSV files.

A parsed battle frame has one row per battle and the columns
``id`` (str), ``prompt`` / ``response_a`` / ``response_b`` (list[str], one item per turn)
and, for training files, ``label`` (int: 0 = A wins, 1 = B wins, 2 = tie).
Turns stay lists because the transformer models truncate turn by turn.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core.errors import UserError

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
REQUIRED = ("id",) + TEXT_COLUMNS
#: Swapping A and B maps label k to SWAP_LABEL[k] and a probability column order likewise.
SWAP_INDEX = [1, 0, 2]


class DataError(UserError, ValueError):
    """Bad input: the message names the file, column and rows; CLIs turn it into exit code 2."""


@dataclass
class DataConfig:
    train: str = "artifacts/demo/demo_train.csv"  # Kaggle-format CSV with labels
    test: str = "artifacts/demo/demo_test.csv"  # the same without labels


def _rows(ids, limit: int = 10) -> str:
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:limit])
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return f"{shown}{more}"


def scrub(text: str) -> str:
    """Drop lone UTF-16 surrogates (they make utf-8 encoding fail) and rejoin valid pairs."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\ufffd", "")


def parse_turns(cell) -> tuple[list[str], bool]:
    """JSON list of strings -> list[str] (null -> ""). Returns (turns, was_raw)."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return [""], True
    text = str(cell)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return [scrub(text)], True
    if not isinstance(value, list):
        return [scrub(text)], True
    return [scrub(v) if isinstance(v, str) else ("" if v is None else scrub(str(v))) for v in value], False


@dataclass
class ReadReport:
    path: str
    rows_read: int = 0
    raw_cells: dict[str, int] = field(default_factory=dict)
    raw_ids: dict[str, list[str]] = field(default_factory=dict)  # the rows behind raw_cells, to look them up
    duplicates_dropped: int = 0

    def summary(self) -> str:
        raw = sum(self.raw_cells.values())
        parts = [f"{self.path}: {self.rows_read} rows"]
        if raw:
            detail = "; ".join(f"{c}={n}, ids {_rows(self.raw_ids.get(c, []))}" for c, n in self.raw_cells.items() if n)
            parts.append(f"{raw} cells were not JSON lists and were read as one raw turn ({detail})")
        if self.duplicates_dropped:
            parts.append(f"{self.duplicates_dropped} exact duplicate battles dropped")
        return "; ".join(parts)


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (no header)") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise DataError(f"{path}: unreadable CSV: {str(exc).strip()}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from None
    return frame


def _labels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    missing = [c for c in TARGETS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing label column(s) {', '.join(missing)}")
    values = np.zeros((len(frame), 3), dtype=float)
    for j, col in enumerate(TARGETS):
        numeric = pd.to_numeric(frame[col].str.strip(), errors="coerce")
        bad = numeric.isna() | ~numeric.isin([0, 1])
        if bad.any():
            raise DataError(
                f"{path}: column {col} must hold 0 or 1; bad values in rows with id {_rows(frame.loc[bad, 'id'])}"
            )
        values[:, j] = numeric.to_numpy()
    not_one = values.sum(axis=1) != 1
    if not_one.any():
        raise DataError(
            f"{path}: each row needs exactly one 1 among {', '.join(TARGETS)}; "
            f"violated by rows with id {_rows(frame.loc[not_one, 'id'])}"
        )
    return values.argmax(axis=1).astype(np.int64)


def read_battles(path: str | Path, labels: bool | None = None, drop_duplicates: bool = True,
                 verbose: bool = True) -> pd.DataFrame:
    """Read and validate one Kaggle-format file.

    labels=True requires the winner columns, False ignores them, None uses them when present.
    """
    path = Path(path)
    frame = _read_csv(path)
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")
    frame["id"] = frame["id"].str.strip()
    empty_id = frame["id"] == ""
    if empty_id.any():
        raise DataError(f"{path}: column id is empty in data rows {_rows((np.flatnonzero(empty_id) + 2).tolist())} (line numbers)")
    dup = frame["id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{path}: column id has duplicate values: {_rows(sorted(set(frame.loc[dup, 'id'])))}")

    report = ReadReport(str(path), rows_read=len(frame))
    out = pd.DataFrame({"id": frame["id"].astype(str)})
    for col in TEXT_COLUMNS:
        parsed = [parse_turns(v) for v in frame[col].tolist()]
        out[col] = [p[0] for p in parsed]
        report.raw_cells[col] = sum(p[1] for p in parsed)
        report.raw_ids[col] = [i for i, p in zip(out["id"], parsed) if p[1]]

    has_labels = all(c in frame.columns for c in TARGETS)
    if labels is True or (labels is None and has_labels):
        out["label"] = _labels(frame, path)

    if drop_duplicates and "label" in out:
        key = out[list(TEXT_COLUMNS)].map(lambda turns: "\x1f".join(turns)).assign(label=out["label"])
        dup_battle = key.duplicated(keep="first")
        report.duplicates_dropped = int(dup_battle.sum())
        out = out.loc[~dup_battle].reset_index(drop=True)
    if verbose:
        print(report.summary(), file=sys.stderr)
    out.attrs["report"] = report
    return out


def swap_ab(frame: pd.DataFrame) -> pd.DataFrame:
    """The same battles with A and B exchanged (labels exchanged, tie kept)."""
    swapped = frame.copy()
    swapped["response_a"], swapped["response_b"] = frame["response_b"], frame["response_a"]
    if "label" in frame:
        swapped["label"] = np.asarray(SWAP_INDEX)[frame["label"].to_numpy()]
    return swapped


def unswap_proba(proba: np.ndarray) -> np.ndarray:
    """Probabilities predicted on swapped input, put back in the original A/B order."""
    return proba[:, SWAP_INDEX]


def save_battles(path: str | Path, frame: pd.DataFrame) -> None:
    from ensemble.core.io import write_parquet

    frame = frame.copy(deep=False)
    frame.attrs = {}  # the read report is not parquet metadata
    write_parquet(path, frame)


def load_battles(path: str | Path) -> pd.DataFrame:
    """Load a parquet written by the prepare stage; turn columns come back as list[str]."""
    frame = pd.read_parquet(path)
    for col in TEXT_COLUMNS:
        frame[col] = [list(v) for v in frame[col]]
    frame["id"] = frame["id"].astype(str)
    return frame


def as_turns(cell) -> list[str]:
    """A turn list for model input, tolerating hand-built frames: a bare string is one turn,
    None/NaN cells and turns become "", and there is always at least one turn."""
    if isinstance(cell, str):
        return [cell]
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return [""]
    turns = ["" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t) for t in cell]
    return turns or [""]
