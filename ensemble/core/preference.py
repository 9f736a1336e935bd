"""The preference layouts behind `ensemble.core.data.read_battles`: prompt/chosen/rejected (TRL "explicit
prompt": prompt a string or chat-message list, chosen/rejected the answers, which may repeat the prompt first)
and chosen/rejected (TRL "implicit prompt": two whole dialogues, message lists or Anthropic HH-RLHF strings,
sharing every turn but the last answer). A row becomes one battle: prompt = the user turns, both sides = the
assistant turns (shared earlier ones identical, the last differs), the chosen answer on side A or B by a coin
seeded with the battle's id, label 0 / 1 accordingly (no ties)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ensemble.core.errors import DataError
from ensemble.core.formats import _HH_MARKER, ROLES, Table, _is_null, scrub, table_ids

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
    messages: list[tuple[str, str]] = []
    for k in range(1, len(parts), 2):
        role, content = roles[parts[k]], parts[k + 1].strip()
        if messages and messages[-1][0] == role:
            # the published HH-RLHF files hold dialogues with two turns of one speaker in a row: read as
            # one turn of that speaker, joined by a blank line
            messages[-1] = (role, messages[-1][1] + "\n\n" + content)
        else:
            messages.append((role, content))
    return messages


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
    return hashlib.sha1(f"{seed}\x1f{ident}".encode()).digest()[0] & 1


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
