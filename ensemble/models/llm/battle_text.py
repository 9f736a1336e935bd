"""Battle -> one token sequence for a decoder LLM: layout, per-part token budget and truncation.

Every token carries a tag saying where it came from (scaffolding, prompt, response A, response B),
so a model can pool over the A and B spans, and every battle reports how much of each part
survived truncation (``TruncationStats``), so a user sees when max_len hides the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ensemble.core.config import ConfigError
from ensemble.core.data import TEXT_COLUMNS, as_turns
from ensemble.nn.hf import CHARS_PER_TOKEN, clip_ids

#: Token tags: scaffolding (headers, template, special tokens), prompt, response A, response B.
TAG_SCAFFOLD, TAG_PROMPT, TAG_A, TAG_B = 0, 1, 2, 3
_PART_TAG = {"p": TAG_PROMPT, "a": TAG_A, "b": TAG_B}
#: Private-use code points: a chat template renders them verbatim, so they mark where contents go.
_SLOT = "\ue000{}\ue001"
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")
_PLAIN_HEADERS = {"p": "User prompt:\n", "a": "\n\nModel A:\n", "b": "\n\nModel B:\n"}
#: Appended after the battle (layout plain): the last token, which a sequence classifier pools,
#: is then always the same question, asked after the model has read both answers.
QUESTION = "\n\nWhich response is better, A or B, or is it a tie?"


def split_budget(n_prompt: int, n_a: int, n_b: int, budget: int, prompt_frac: float) -> tuple[int, int, int]:
    """Tokens for (prompt, A, B): the prompt gets at most prompt_frac, A and B share the rest evenly,
    and whatever one part does not use goes to the others. Symmetric in A and B (swap TTA relies on
    it), and each non-empty response gets at least half of the non-prompt budget, so both stay visible."""
    budget = max(0, int(budget))
    p = min(n_prompt, int(budget * prompt_frac))
    rest = budget - p
    half = rest // 2
    a = min(n_a, max(half, rest - n_b))
    b = min(n_b, max(half, rest - n_a))
    p = min(n_prompt, budget - a - b)
    return p, a, b


def _fill(lengths: list[int], budget: int, side: str) -> list[int]:
    """Spread a part's budget over its turns: from the last turn back (side='left' keeps the end of
    a long conversation) or from the first turn on."""
    out = [0] * len(lengths)
    order = range(len(lengths) - 1, -1, -1) if side == "left" else range(len(lengths))
    for i in order:
        out[i] = min(lengths[i], budget)
        budget -= out[i]
    return out


@dataclass
class TruncationStats:
    """Per battle and part (prompt, A, B): tokens of the text and tokens kept in the sequence."""

    total: list[tuple[int, int, int]] = field(default_factory=list)
    kept: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, total: tuple[int, int, int], kept: tuple[int, int, int]) -> None:
        self.total.append(total)
        self.kept.append(kept)

    def summary(self) -> dict:
        """Mean share of tokens kept and share of battles cut, per part; `any` = any part cut."""
        total, kept = (np.asarray(self.total, dtype=float).reshape(-1, 3),
                       np.asarray(self.kept, dtype=float).reshape(-1, 3))
        if not len(total):
            return {"battles": 0}
        share = np.where(total > 0, kept / np.maximum(total, 1), 1.0)
        cut = kept < total
        out = {"battles": int(len(total))}
        for j, part in enumerate(("prompt", "response_a", "response_b")):
            out[part] = {"kept_share": round(float(share[:, j].mean()), 4),
                         "battles_cut": round(float(cut[:, j].mean()), 4)}
        out["battles_cut_any"] = round(float(cut.any(axis=1).mean()), 4)
        return out


@dataclass
class Encoded:
    """Token ids and tags of each battle (and of its A/B-swapped twin, or None)."""

    ids: list[list[int]]
    tags: list[list[int]]
    swap_ids: list[list[int]] | None = None
    swap_tags: list[list[int]] | None = None
    truncation: TruncationStats = field(default_factory=TruncationStats)


class BattleEncoder:
    """One token sequence per battle, at most max_len ids, laid out as the seed did ("User prompt /
    Model A / Model B", then the judging question) or through the tokenizer's chat template."""

    def __init__(self, tokenizer, max_len: int, prompt_frac: float = 0.2, layout: str = "plain",
                 turns: str = "interleaved", side: str = "left", question: bool = True):
        self.tok, self.max_len, self.prompt_frac = tokenizer, int(max_len), prompt_frac
        self.layout, self.turns, self.side = layout, turns, side
        self._literal: dict[str, list[int]] = {}
        self._skeletons: dict[int, tuple[list, int]] = {}
        self.question = question
        if layout == "plain":  # the tokenizer's own special tokens (e.g. Llama's BOS) around the text
            with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
            bare = tokenizer("x", add_special_tokens=False)["input_ids"]
            at = next((i for i in range(len(with_special) - len(bare) + 1)
                       if with_special[i:i + len(bare)] == bare), 0)
            self.prefix, self.suffix = with_special[:at], with_special[at + len(bare):]
        else:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigError("params llm.layout: 'chat' but the tokenizer has no chat template; "
                                  "use layout: plain")
            self.prefix, self.suffix = [], []

    # -- skeleton: literal token ids and content slots (part, turn) for a battle of n turns
    def _ids(self, text: str) -> list[int]:
        if text not in self._literal:
            self._literal[text] = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        return self._literal[text]

    def _render(self, n: int) -> str:
        slot = {(part, t): _SLOT.format(3 * t + "pab".index(part)) for t in range(n) for part in "pab"}
        if self.layout == "plain":
            return "\n\n".join(_PLAIN_HEADERS["p"] + slot["p", t] + _PLAIN_HEADERS["a"] + slot["a", t]
                               + _PLAIN_HEADERS["b"] + slot["b", t]
                               for t in range(n)) + (QUESTION if self.question else "")
        messages = []
        for t in range(n):
            messages.append({"role": "user", "content": slot["p", t]})
            messages.append({"role": "assistant",
                             "content": "Model A:\n" + slot["a", t] + "\n\nModel B:\n" + slot["b", t]})
        return self.tok.apply_chat_template(messages, tokenize=False)

    def skeleton(self, n: int) -> tuple[list, int]:
        """([literal ids | (part, turn)], overhead tokens) for n turns, cached."""
        if n not in self._skeletons:
            text = self._render(n)
            pieces, pos, seen = [], 0, 0
            for m in _SLOT_RE.finditer(text):
                pieces.append(self._ids(text[pos:m.start()]))
                k = int(m.group(1))
                pieces.append(("pab"[k % 3], k // 3))
                pos, seen = m.end(), seen + 1
            pieces.append(self._ids(text[pos:]))
            if seen != 3 * n:
                raise ConfigError("params llm.layout: the tokenizer's chat template drops message contents; "
                                  "use layout: plain")
            overhead = len(self.prefix) + len(self.suffix) + sum(len(p) for p in pieces if isinstance(p, list))
            self._skeletons[n] = (pieces, overhead)
        return self._skeletons[n]

    def check_budget(self) -> None:
        """A budget that leaves no room for text after the layout's own tokens cannot learn anything."""
        _, one = self.skeleton(1)
        if one > self.max_len - 3:
            raise ConfigError(f"params llm.max_len: {self.max_len} tokens leave no room for text after the "
                              f"{one} tokens of the {self.layout} layout; raise max_len to at least {one + 16}")

    def _kept_turns(self, n: int) -> int:
        """Most turns whose scaffolding fits in half the budget (at least one)."""
        self.check_budget()
        k = n
        while k > 1 and self.skeleton(k)[1] > self.max_len // 2:
            k -= 1
        return k

    def _cut(self, text: str) -> str:
        limit = self.max_len * CHARS_PER_TOKEN
        if len(text) <= limit:
            return text
        return text[-limit:] if self.side == "left" else text[:limit]

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Contents with special-token text split into ordinary tokens: a response containing
        '<|im_end|>' must neither end the turn nor be read as padding."""
        unique = list(dict.fromkeys(texts))
        ids = self.tok(unique, add_special_tokens=False, split_special_tokens=True)["input_ids"] if unique else []
        lookup = dict(zip(unique, ids))
        return [lookup[t] for t in texts]

    def build(self, parts: dict[str, list[list[int]]]) -> tuple[list[int], list[int], tuple[int, int, int]]:
        """(ids, tags, kept tokens of prompt/A/B) of one battle from the token ids of its turns:
        {'p': [...], 'a': [...], 'b': [...]}."""
        n = max(len(v) for v in parts.values())
        parts = {k: v + [[]] * (n - len(v)) for k, v in parts.items()}
        k = self._kept_turns(n)
        while True:
            keep = slice(n - k, n) if self.side == "left" else slice(0, k)
            kept = {key: v[keep] for key, v in parts.items()}
            pieces, overhead = self.skeleton(k)
            totals = {key: sum(len(t) for t in v) for key, v in kept.items()}
            bp, ba, bb = split_budget(totals["p"], totals["a"], totals["b"], self.max_len - overhead, self.prompt_frac)
            budget = {"p": _fill([len(t) for t in kept["p"]], bp, self.side),
                      "a": _fill([len(t) for t in kept["a"]], ba, self.side),
                      "b": _fill([len(t) for t in kept["b"]], bb, self.side)}
            # turns on the cut side that got no text at all are pure scaffolding: drop them, re-split
            used = [budget["p"][t] + budget["a"][t] + budget["b"][t] > 0 for t in range(k)]
            if self.side == "left":
                empty = next((t for t, u in enumerate(used) if u), k)
            else:
                empty = next((t for t, u in enumerate(reversed(used)) if u), k)
            if k == 1 or empty == 0:
                break
            k = max(1, k - empty)
        ids, tags = list(self.prefix), [TAG_SCAFFOLD] * len(self.prefix)
        for piece in pieces:
            if isinstance(piece, list):
                ids.extend(piece)
                tags.extend([TAG_SCAFFOLD] * len(piece))
            else:
                part, t = piece
                text = clip_ids(kept[part][t], budget[part][t], self.side)
                ids.extend(text)
                tags.extend([_PART_TAG[part]] * len(text))
        ids.extend(self.suffix)
        tags.extend([TAG_SCAFFOLD] * len(self.suffix))
        return ids, tags, (sum(budget["p"]), sum(budget["a"]), sum(budget["b"]))

    def encode_frame(self, frame: pd.DataFrame, swapped: bool = True) -> Encoded:
        """Each battle (and its A/B-swapped twin when `swapped`); contents tokenized once for both."""
        cells = {c: [as_turns(v) for v in frame[c]] for c in TEXT_COLUMNS}
        if self.turns == "grouped":
            cells = {c: [["\n\n".join(t)] for t in v] for c, v in cells.items()}
        raw = [t for c in TEXT_COLUMNS for row in cells[c] for t in row]
        flat = [self._cut(t) for t in raw]
        was_cut = iter([len(c) < len(t) for c, t in zip(flat, raw)])
        ids = iter(self.tokenize(flat))
        tok, cut = {}, {}
        for c in TEXT_COLUMNS:
            tok[c] = [[next(ids) for _ in row] for row in cells[c]]
        for c in TEXT_COLUMNS:
            cut[c] = [any([next(was_cut) for _ in row]) for row in cells[c]]
        out = Encoded([], [], [] if swapped else None, [] if swapped else None)
        for i, (p, a, b) in enumerate(zip(tok["prompt"], tok["response_a"], tok["response_b"])):
            seq, tag, kept = self.build({"p": p, "a": a, "b": b})
            out.ids.append(seq)
            out.tags.append(tag)
            # a text cut by characters before tokenizing counts one token more than was kept
            total = tuple(sum(map(len, x)) + int(cut[c][i]) for x, c in zip((p, a, b), TEXT_COLUMNS))
            out.truncation.add(total, kept)
            if swapped:
                seq, tag, _ = self.build({"p": p, "a": b, "b": a})
                out.swap_ids.append(seq)
                out.swap_tags.append(tag)
        return out
