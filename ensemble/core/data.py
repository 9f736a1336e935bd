"""Battle data contract: read, validate and clean battle files (Kaggle LMSYS layout or preference data).

A parsed battle frame has one row per battle and the columns
``id`` (str), ``prompt`` / ``response_a`` / ``response_b`` (list[str], one item per turn)
and, for training files, ``label`` (int: 0 = A wins, 1 = B wins, 2 = tie).
Turns stay lists because the transformer models truncate turn by turn.
`read_battles` is the entry point; the file types and the preference layouts live in ensemble.core.formats.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble import TARGETS
from ensemble.core import formats, preference
from ensemble.core.errors import DataError
from ensemble.core.formats import (  # noqa: F401 (the contract's names)
    REQUIRED,
    TEXT_COLUMNS,
    listed,
    parse_turns,
    scrub,
)

#: Swapping A and B maps label k to SWAP_LABEL[k] and a probability column order likewise.
SWAP_INDEX = [1, 0, 2]
#: What the labels 0, 1, 2 mean, for messages and summaries.
LABEL_NAMES = ("A wins", "B wins", "tie")


@dataclass
class DataConfig:
    train: str = "artifacts/demo/demo_train.csv"  # battle file with labels (.csv / .jsonl / .parquet, any layout)
    test: str = "artifacts/demo/demo_test.csv"  # the same; labels optional (prepare drops them)
    side_seed: int = 0  # preference files (chosen/rejected): seed of the per-id coin putting chosen on side A or B
    # unlabelled battles (any layout without labels, e.g. kaggle columns without winner_*): a distilling
    # student's pseudo-labels (docs/distillation.md); "" = none
    unlabelled: str = ""


def class_counts(labels) -> dict[str, int]:
    """Rows per class, every class named even when absent: {"A wins": n, "B wins": n, "tie": n}."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=3)
    return {name: int(n) for name, n in zip(LABEL_NAMES, counts)}


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


@dataclass
class ReadReport:
    path: str
    rows_read: int = 0
    raw_cells: dict[str, int] = field(default_factory=dict)
    raw_ids: dict[str, list[str]] = field(default_factory=dict)  # the rows behind raw_cells, to look them up
    duplicates_dropped: int = 0
    layout: str = "kaggle"  # a key of formats.LAYOUTS
    detail: str = ""  # preference layouts: the cell forms seen, e.g. "chat messages"
    chosen_on_a: int | None = None  # preference layouts: rows whose chosen answer went to side A
    derived_ids: bool = False  # ids made from the texts (the file had no id column)

    def summary(self) -> str:
        raw = sum(self.raw_cells.values())
        head = f"{self.path}: {self.rows_read} rows, layout {self.layout}"
        if self.detail:
            head += f" ({self.detail})"
        if self.chosen_on_a is not None:
            head += f", chosen put on side A in {self.chosen_on_a} rows"
        if self.derived_ids:
            head += ", ids derived from the texts"
        parts = [head]
        if raw:
            detail = "; ".join(f"{c}={n}, ids {listed(self.raw_ids.get(c, []))}"
                               for c, n in self.raw_cells.items() if n)
            parts.append(f"{raw} cells were not JSON lists and were read as one raw turn ({detail})")
        if self.duplicates_dropped:
            parts.append(f"{self.duplicates_dropped} exact duplicate battles dropped")
        return "; ".join(parts)


def _numeric(column: pd.Series) -> pd.Series:
    """A label column as numbers, NaN where it is not one (CSV text is stripped first)."""
    if not pd.api.types.is_numeric_dtype(column):  # CSV text, or JSONL objects (None -> "None" -> NaN)
        column = column.astype(str).str.strip()
    return pd.to_numeric(column, errors="coerce")


def _labels(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """The Kaggle winner columns, or else a `label` column of 0/1/2 (the prepared parquet files)."""
    if "label" in frame.columns and not any(c in frame.columns for c in TARGETS):
        numeric = _numeric(frame["label"])
        bad = numeric.isna() | ~numeric.isin([0, 1, 2])
        if bad.any():
            raise DataError(f"{path}: column label must hold 0, 1 or 2; "
                            f"bad values in rows with id {listed(frame.loc[bad, 'id'])}")
        return numeric.to_numpy().astype(np.int64)
    missing = [c for c in TARGETS if c not in frame.columns]
    if missing:
        alt = " (or one column label of 0/1/2)" if len(missing) == len(TARGETS) else ""
        raise DataError(f"{path}: missing label column(s) {', '.join(missing)}{alt}")
    values = np.zeros((len(frame), 3), dtype=float)
    for j, col in enumerate(TARGETS):
        numeric = _numeric(frame[col])
        bad = numeric.isna() | ~numeric.isin([0, 1])
        if bad.any():
            raise DataError(
                f"{path}: column {col} must hold 0 or 1; bad values in rows with id {listed(frame.loc[bad, 'id'])}"
            )
        values[:, j] = numeric.to_numpy()
    not_one = values.sum(axis=1) != 1
    if not_one.any():
        raise DataError(
            f"{path}: each row needs exactly one 1 among {', '.join(TARGETS)}; "
            f"violated by rows with id {listed(frame.loc[not_one, 'id'])}"
        )
    return values.argmax(axis=1).astype(np.int64)


def read_battles(path: str | Path, labels: bool | None = None, drop_duplicates: bool = True,
                 verbose: bool = True, side_seed: int = 0) -> pd.DataFrame:
    """Read and validate one battle file: .csv, .jsonl or .parquet, in the kaggle, prompt/chosen/rejected or
    chosen/rejected layout (recognised from the columns; see ensemble.core.formats).

    labels=True requires labels (and at least two classes), False drops them, None keeps them when present.
    A preference file always has labels: 0 / 1 as its chosen answer went to side A / B by a coin seeded
    with `side_seed` and the battle's id.
    """
    path = Path(path)
    table = formats.read_table(path)
    layout = formats.detect_layout(table)
    if layout == "kaggle":
        out, report = _kaggle_battles(table, labels)
    else:
        out, info = preference.preference_battles(table, layout, side_seed)
        report = ReadReport(str(path), rows_read=len(out), layout=layout, detail=info.detail,
                            chosen_on_a=info.chosen_on_a, derived_ids=info.derived_ids)
        if labels is False:
            out = out.drop(columns="label")

    if drop_duplicates and "label" in out:
        a, b = out["response_a"], out["response_b"]
        key_label = out["label"]
        if layout != "kaggle":  # the same preference with the sides swapped is the same battle: key it chosen-first
            flip = out["label"] == 1
            a, b, key_label = a.where(~flip, b), b.where(~flip, a), 0
        key = pd.DataFrame({"prompt": out["prompt"], "a": a, "b": b}).map(lambda turns: "\x1f".join(turns))
        dup_battle = key.assign(label=key_label).duplicated(keep="first")
        report.duplicates_dropped = int(dup_battle.sum())
        out = out.loc[~dup_battle].reset_index(drop=True)
    if labels is True:
        counts = class_counts(out["label"])
        if sum(n > 0 for n in counts.values()) < 2:
            raise DataError(f"{path}: the labels hold a single class ({format_counts(counts)}); "
                            f"training needs at least two of {' / '.join(LABEL_NAMES)}")
    if verbose:
        print(report.summary(), file=sys.stderr)
    out.attrs["report"] = report
    return out


def _kaggle_battles(table, labels: bool | None) -> tuple[pd.DataFrame, ReadReport]:
    """The kaggle layout. CSV keeps the fast path (parse_turns on each text cell); JSONL / parquet cells
    may also be real lists (formats.parse_cell)."""
    path, frame = table.path, table.frame
    frame["id"] = formats.table_ids(table)
    parse = parse_turns if table.kind == "csv" else formats.parse_cell
    report = ReadReport(str(path), rows_read=len(frame))
    out = pd.DataFrame({"id": frame["id"].astype(str)})
    for col in TEXT_COLUMNS:
        parsed = [parse(v) for v in frame[col].tolist()]
        out[col] = [p[0] for p in parsed]
        report.raw_cells[col] = sum(p[1] for p in parsed)
        report.raw_ids[col] = [i for i, p in zip(out["id"], parsed) if p[1]]

    has_labels = all(c in frame.columns for c in TARGETS) or "label" in frame.columns
    if labels is True or (labels is None and has_labels):
        out["label"] = _labels(frame, path)
    return out, report


def swap_ab(frame: pd.DataFrame) -> pd.DataFrame:
    """The same battles with A and B exchanged (labels exchanged, tie kept)."""
    swapped = frame.copy()
    swapped["response_a"], swapped["response_b"] = frame["response_b"], frame["response_a"]
    if "label" in frame:
        swapped["label"] = np.asarray(SWAP_INDEX)[frame["label"].to_numpy()]
    if "soft_a" in frame:  # a teacher's soft targets (ensemble.core.targets) follow their answers
        swapped["soft_a"], swapped["soft_b"] = frame["soft_b"], frame["soft_a"]
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


def turn_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell as a list of turns (as_turns): a hand-built frame of plain strings
    reads as the same battles given as one-turn lists. Returned as is when it already is."""
    todo = [col for col in TEXT_COLUMNS if col in frame
            and not all(isinstance(c, list) and all(isinstance(t, str) for t in c) for c in frame[col])]
    if not todo:
        return frame
    frame = frame.copy(deep=False)
    for col in todo:
        frame[col] = [as_turns(c) for c in frame[col]]
    return frame
