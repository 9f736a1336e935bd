"""File types and column layouts behind `ensemble.core.data.read_battles` (the entry point).

File types: `.csv`, `.jsonl` (one JSON object per line) and `.parquet`. Layouts, recognised from the columns:

* **kaggle**: `id, prompt, response_a, response_b` (+ `winner_model_a, winner_model_b, winner_tie`, or the
  prepared files' int `label`); text cells are lists of strings, real or JSON-encoded. Read by data.py.
* **prompt/chosen/rejected** (TRL "explicit prompt" preference data): `prompt` a string or a chat-message list,
  `chosen` / `rejected` a string or a message list of the assistant answer (which may repeat the prompt first,
  as HuggingFaceH4/ultrafeedback_binarized does).
* **chosen/rejected** (TRL "implicit prompt"): two whole dialogues, message lists or Anthropic HH-RLHF strings
  (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`), that share every turn but the last answer.

A preference row becomes one battle: prompt = the user turns, both sides = the assistant turns (the shared
earlier ones identical, as in the arena's multi-turn rows; the last one differs), the chosen answer on side A or
B by a coin seeded with the battle's id, label 0 / 1 accordingly (no ties).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.errors import DataError

#: The contract's text columns (each a list of turns) and the kaggle layout's required columns.
TEXT_COLUMNS = ("prompt", "response_a", "response_b")
REQUIRED = ("id",) + TEXT_COLUMNS

SUFFIXES = (".csv", ".jsonl", ".parquet")
#: Tried in this order; the first whose columns are all present wins (extra columns are ignored).
LAYOUTS = {
    "kaggle": REQUIRED,
    "prompt/chosen/rejected": ("prompt", "chosen", "rejected"),
    "chosen/rejected": ("chosen", "rejected"),
}
ROLES = ("system", "user", "assistant")
#: An HH-RLHF turn marker: at the start of the text or after a blank line.
_HH_MARKER = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")


def listed(items, limit: int = 10) -> str:
    """Items (ids, columns) for a message: the first `limit`, then how many more."""
    items = [str(i) for i in items]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


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


# --------------------------------------------------------------------------------- reading a table

@dataclass
class Table:
    """The raw rows of one file (column names stripped), and how a message names a row."""

    path: Path
    kind: str  # csv | jsonl | parquet
    frame: pd.DataFrame
    lines: list[int] | None = None  # JSONL: the line each row came from
    _csv_lines: list[int] | None = field(default=None, repr=False)

    def line_numbers(self) -> list[int] | None:
        """The line each row starts on (CSV: the header is line 1; JSONL: blank lines counted); None for parquet."""
        if self.kind == "csv" and self._csv_lines is None:
            self._csv_lines = _csv_record_lines(self.path, len(self.frame))
        return self._csv_lines if self.kind == "csv" else self.lines

    def where(self, i: int, ident: str | None = None) -> str:
        """Row i as a message names it: `line 7` (CSV/JSONL) or `row 7` (parquet, 1-based), and its id if known."""
        lines = self.line_numbers()
        place = f"line {lines[i]}" if lines else f"row {i + 1}"
        return f"{place} (id {ident})" if ident else place

    def rows_named(self, indices) -> str:
        lines = self.line_numbers()
        if lines:
            return f"line(s) {listed([lines[i] for i in indices])}"
        return f"row(s) {listed([i + 1 for i in indices])}"


def _csv_record_lines(path: Path, n_rows: int) -> list[int]:
    """Where each data record starts: pandas does not say, and a quoted cell may span lines. Only error
    messages need it, so the file is scanned again then, not on every read."""
    old = csv.field_size_limit(2**31 - 1)  # long answers exceed the 128 KiB default
    starts, previous = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            for record in reader:
                if record:  # pandas skips blank lines too
                    starts.append(previous + 1)
                previous = reader.line_num
    except (csv.Error, OSError, UnicodeDecodeError):
        starts = []
    finally:
        csv.field_size_limit(old)
    starts = starts[1:]
    # A dialect pandas read differently: fall back to record numbers (header = line 1).
    return starts if len(starts) == n_rows else list(range(2, n_rows + 2))


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (no header)") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise DataError(f"{path}: unreadable CSV: {str(exc).strip()}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from None


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false",
               type(None): "null"}


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    records, lines = [], []
    try:
        with open(path, "rb") as fh:  # bytes: a line number for bad UTF-8 too, and only \n ends a line
            for n, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")  # an error's column then counts on this line
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}: line {n}: not valid UTF-8 text "
                                    f"({exc.reason} at byte {exc.start})") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {n}: invalid JSON ({exc.msg} at column {exc.colno})") from None
                except RecursionError:
                    raise DataError(f"{path}: line {n}: invalid JSON (nested too deeply)") from None
                if not isinstance(record, dict):
                    found = _JSON_TYPES.get(type(record), type(record).__name__)
                    raise DataError(f"{path}: line {n}: expected a JSON object, found {found}")
                records.append(record)
                lines.append(n)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from None
    if not records:
        raise DataError(f"{path}: file is empty (no JSON objects)")
    # object dtype: an int id stays 12 (not 12.0) when another row lacks the key
    return pd.DataFrame(records, dtype=object), lines


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: unreadable parquet file: {reason}") from None


def read_table(path: Path) -> Table:
    """The file's rows by its suffix; a missing, empty or unreadable file is a DataError."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a {', '.join(SUFFIXES)} file")
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; expected one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    lines = None
    if suffix == ".csv":
        frame = _read_csv(path)
    elif suffix == ".jsonl":
        frame, lines = _read_jsonl(path)
    else:
        frame = _read_parquet(path)
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows" if suffix == ".csv" else f"{path}: file has no rows")
    if suffix == ".parquet":
        frame = frame.reset_index(drop=True)  # a stored pandas index would misalign the per-row columns built later
    frame.columns = [str(c).strip() for c in frame.columns]
    return Table(path, suffix[1:], frame, lines)


def detect_layout(table: Table) -> str:
    """The first layout whose columns are all present; otherwise a DataError naming the nearest layout's
    missing columns, every layout tried and the columns found."""
    columns = list(table.frame.columns)
    for name, required in LAYOUTS.items():
        if all(c in columns for c in required):
            return name
    # nearest: the most required columns present (ties: the earlier layout, kaggle first)
    nearest = max(LAYOUTS, key=lambda name: sum(c in columns for c in LAYOUTS[name]))
    missing = [c for c in LAYOUTS[nearest] if c not in columns]
    tried = ", ".join(f"{name} ({', '.join(req)})" for name, req in LAYOUTS.items())
    raise DataError(f"{table.path}: missing required column(s) {', '.join(missing)} for the {nearest} layout "
                    f"(found: {listed(columns, 20)}); layouts tried: {tried}")


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _id_text(value) -> str:
    return "" if _is_null(value) else str(value).strip()


def table_ids(table: Table) -> pd.Series:
    """The `id` column as stripped strings; empty or duplicate ids are a DataError."""
    ids = table.frame["id"]
    ids = ids.str.strip() if table.kind == "csv" else pd.Series([_id_text(v) for v in ids], dtype=str)
    empty = (ids == "").to_numpy()
    if empty.any():
        raise DataError(f"{table.path}: column id is empty on {table.rows_named(np.flatnonzero(empty))}")
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise DataError(f"{table.path}: column id has duplicate values: {listed(sorted(set(ids[dup])))}")
    return ids


def parse_cell(cell) -> tuple[list[str], bool]:
    """A kaggle text cell from JSONL or parquet: a real list of strings (parquet: an array), or a
    JSON-encoded one as in the CSV (then parse_turns). Returns (turns, was_raw)."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        return ["" if _is_null(v) else scrub(v if isinstance(v, str) else str(v)) for v in cell], False
    return parse_turns(cell)
