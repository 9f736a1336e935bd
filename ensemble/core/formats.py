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
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.data import REQUIRED, DataError, parse_turns, scrub

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


def _listed(items, limit: int = 10) -> str:
    items = [str(i) for i in items]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


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
            return f"line(s) {_listed([lines[i] for i in indices])}"
        return f"row(s) {_listed([i + 1 for i in indices])}"


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
                    f"(found: {_listed(columns, 20)}); layouts tried: {tried}")


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
        raise DataError(f"{table.path}: column id has duplicate values: {_listed(sorted(set(ids[dup])))}")
    return ids


def parse_cell(cell) -> tuple[list[str], bool]:
    """A kaggle text cell from JSONL or parquet: a real list of strings (parquet: an array), or a
    JSON-encoded one as in the CSV (then parse_turns). Returns (turns, was_raw)."""
    if isinstance(cell, (list, tuple, np.ndarray)):
        return ["" if _is_null(v) else scrub(v if isinstance(v, str) else str(v)) for v in cell], False
    return parse_turns(cell)


# ---------------------------------------------------------------------------- preference layouts

class RowError(ValueError):
    """One row's problem; preference_battles adds the file and the row."""


def _message_list(items: list, column: str) -> list[tuple[str, str]]:
    if not items:
        raise RowError(f"{column} is an empty message list")
    messages = []
    for k, m in enumerate(items, 1):
        if not isinstance(m, dict):
            raise RowError(f"{column}: message {k} is {type(m).__name__}, expected a {{role, content}} object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RowError(f"{column}: message {k} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"{column}: message {k} ({role}) has a non-string content ({type(content).__name__})")
        messages.append((role, scrub(content)))
    return messages


def _cell(value, column: str) -> tuple[str | list[tuple[str, str]], str]:
    """A preference cell as plain text or [(role, content), ...], and its kind for the report. A string
    holding a JSON message list (how a CSV carries one) counts as the list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]") and '"role"' in text:
            try:
                decoded = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                decoded = None
            if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
                return _message_list(decoded, column), "chat messages"
        return scrub(value), "strings"
    if isinstance(value, (list, tuple, np.ndarray)):
        return _message_list(list(value), column), "chat messages"
    if _is_null(value):
        raise RowError(f"{column} is missing (null)")
    raise RowError(f"{column} must be a string or a list of {{role, content}} messages, not {type(value).__name__}")


def _hh_messages(text: str, column: str) -> list[tuple[str, str]]:
    """An Anthropic HH-RLHF dialogue string as messages (Human -> user, Assistant -> assistant)."""
    parts = _HH_MARKER.split(text)
    if len(parts) < 3:
        raise RowError(f"{column} is not a dialogue: no \\n\\nHuman: / \\n\\nAssistant: turns")
    if parts[0].strip():
        raise RowError(f"{column} has text before its first Human: / Assistant: turn")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [(roles[parts[k]], parts[k + 1].strip()) for k in range(1, len(parts), 2)]


def dialogue_turns(messages: list[tuple[str, str]], column: str) -> tuple[list[str], list[str]]:
    """(user turns, assistant turns) of a dialogue alternating user, assistant, ... and ending in an
    assistant turn. System messages are only allowed before the first user turn and are prepended to it
    (joined by a blank line): the battle format has no separate system text."""
    system = []
    while len(system) < len(messages) and messages[len(system)][0] == "system":
        system.append(messages[len(system)][1])
    users, answers, expect = [], [], "user"
    for k, (role, content) in enumerate(messages[len(system):], len(system) + 1):
        if role == "system":
            raise RowError(f"{column}: message {k} is a system message after the first user turn")
        if role != expect:
            raise RowError(f"{column}: message {k} is {role!r} where {expect!r} was expected "
                           f"(turns alternate user, assistant)")
        (users if role == "user" else answers).append(content)
        expect = "assistant" if role == "user" else "user"
    if not users:
        raise RowError(f"{column} has no user turn")
    if expect == "assistant":
        raise RowError(f"{column} does not end in an assistant turn")
    if system:
        users[0] = "\n\n".join(system + [users[0]])
    return users, answers


def _as_dialogue(value, column: str) -> tuple[list[tuple[str, str]], str]:
    """chosen/rejected layout: a whole dialogue, a message list or an HH string."""
    cell, kind = _cell(value, column)
    if isinstance(cell, str):
        return _hh_messages(cell, column), "HH dialogue strings"
    return cell, kind


def _answer_messages(value, column: str, prompt: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str]:
    """prompt/chosen/rejected layout: the answer's messages. A list that starts with the conversation
    (H4 ultrafeedback_binarized repeats the prompt in chosen / rejected) must start with the prompt, which is
    then dropped."""
    cell, kind = _cell(value, column)
    if isinstance(cell, str):
        return [("assistant", cell)], kind
    if cell[0][0] != "assistant":
        head = cell[:len(prompt)]
        if [(r, c.strip()) for r, c in head] != [(r, c.strip()) for r, c in prompt]:
            raise RowError(f"{column} starts with a {cell[0][0]} message but does not repeat the prompt's messages")
        cell = cell[len(prompt):]
        if not cell:
            raise RowError(f"{column} repeats the prompt but holds no answer")
    return cell, kind


def _check_shared(chosen: tuple[list[str], list[str]], rejected: tuple[list[str], list[str]]) -> None:
    """The two dialogues must be the same conversation up to the last answer."""
    (users_c, answers_c), (users_r, answers_r) = chosen, rejected
    if len(answers_c) != len(answers_r):
        raise RowError(f"chosen has {len(answers_c)} assistant turns and rejected {len(answers_r)}; "
                       f"they must share every turn but the last answer")
    for t in range(len(users_c)):
        if users_c[t] != users_r[t]:
            raise RowError(f"chosen and rejected differ in user turn {t + 1}; "
                           f"they must share every turn but the last answer")
        if t < len(users_c) - 1 and answers_c[t] != answers_r[t]:
            raise RowError(f"chosen and rejected differ in assistant turn {t + 1} of {len(users_c)}; "
                           f"they must share every turn but the last answer")
    if answers_c[-1] == answers_r[-1]:
        raise RowError("chosen and rejected are identical")


def content_id(prompt: list[str], chosen: list[str], rejected: list[str]) -> str:
    """A stable id from the parsed texts (the same whatever the file type or cell form)."""
    text = "\x1e".join("\x1f".join(turns) for turns in (prompt, chosen, rejected))
    return "sha1-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def chosen_side(ident: str, seed: int) -> int:
    """0 = chosen on side A, 1 = on side B: a fair coin from the id and the seed only, so a battle keeps its
    sides whatever the row order, run or file type."""
    return hashlib.sha1(f"{seed}\x1f{ident}".encode("utf-8")).digest()[0] & 1


@dataclass
class PreferenceInfo:
    detail: str  # the cell forms seen, e.g. "chat messages"
    chosen_on_a: int
    derived_ids: bool


def preference_battles(table: Table, layout: str, side_seed: int = 0) -> tuple[pd.DataFrame, PreferenceInfo]:
    """A prompt/chosen/rejected or chosen/rejected table as a battle frame with labels (0 = chosen on A)."""
    frame = table.frame
    ids = table_ids(table) if "id" in frame.columns else None
    prompts = frame["prompt"].tolist() if layout == "prompt/chosen/rejected" else [None] * len(frame)
    rows, kinds = [], set()
    for i, (p, c, r) in enumerate(zip(prompts, frame["chosen"].tolist(), frame["rejected"].tolist())):
        try:
            if layout == "prompt/chosen/rejected":
                prompt, _ = _cell(p, "prompt")
                prompt = [("user", prompt)] if isinstance(prompt, str) else prompt
                (c_msgs, kind_c), (r_msgs, kind_r) = (_answer_messages(c, "chosen", prompt),
                                                      _answer_messages(r, "rejected", prompt))
                chosen = dialogue_turns(prompt + c_msgs, "prompt + chosen")
                rejected = dialogue_turns(prompt + r_msgs, "prompt + rejected")
            else:
                (c_msgs, kind_c), (r_msgs, kind_r) = _as_dialogue(c, "chosen"), _as_dialogue(r, "rejected")
                chosen, rejected = dialogue_turns(c_msgs, "chosen"), dialogue_turns(r_msgs, "rejected")
            _check_shared(chosen, rejected)
        except RowError as exc:
            raise DataError(f"{table.path}: {table.where(i, None if ids is None else ids.iloc[i])}: {exc}") from None
        kinds.update((kind_c, kind_r))
        rows.append((chosen[0], chosen[1], rejected[1]))

    if ids is None:  # exact duplicate rows: the k-th copy gets "-k", in file order
        ids, seen = [], {}
        for prompt, chosen, rejected in rows:
            base = content_id(prompt, chosen, rejected)
            seen[base] = seen.get(base, 0) + 1
            ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    ids = [str(i) for i in ids]
    sides = np.array([chosen_side(i, side_seed) for i in ids], dtype=np.int64)
    out = pd.DataFrame({
        "id": pd.Series(ids, dtype=str),
        "prompt": [prompt for prompt, _, _ in rows],
        "response_a": [rejected if side else chosen for (_, chosen, rejected), side in zip(rows, sides)],
        "response_b": [chosen if side else rejected for (_, chosen, rejected), side in zip(rows, sides)],
        "label": sides,
    })
    info = PreferenceInfo(detail=" and ".join(sorted(kinds)), chosen_on_a=int((sides == 0).sum()),
                          derived_ids="id" not in frame.columns)
    return out, info
