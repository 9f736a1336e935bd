"""Dual tower text -> token ids: one tower per side, [CLS] (prompt [SEP] response [SEP]) per kept turn."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ensemble.core.data import as_turns
from ensemble.nn.hf import CHARS_PER_TOKEN, clip_ids

#: A kept turn needs room for something beyond its two separators.
MIN_TURN_TOKENS = 8


def build_tower(prompt_ids: list[list[int]], response_ids: list[list[int]], max_len: int, keep: str = "left",
                prompt_frac: float = 0.4, cls_id: int | None = None, sep_id: int | None = None) -> list[int]:
    """One tower's ids: [CLS] (prompt [SEP] response [SEP]) per kept turn, at most max_len ids.

    Turns are kept whole-turn-first from the end (keep='left') or the start ('right'), so the last
    (first) exchange is always visible instead of being cut off the tail of one long string. Inside
    a turn the prompt gets at most prompt_frac of the turn's budget unless the response leaves room:
    a long pasted prompt must not squeeze the response (the thing being judged) out. The prompt
    keeps its end (the question sits next to the answer), the response its beginning.
    """
    head = [cls_id] if cls_id is not None else []
    sep = [sep_id] if sep_id is not None else []
    budget = max_len - len(head)
    turns = list(itertools.zip_longest(prompt_ids, response_ids, fillvalue=[]))
    non_empty = [t for t in turns if t[0] or t[1]]
    turns = non_empty or turns[-1:]
    order = list(reversed(turns)) if keep == "left" else turns
    kept: list[list[int]] = []
    for i, (p, r) in enumerate(order):
        room = budget - 2 * len(sep)
        if room < (1 if i == 0 else MIN_TURN_TOKENS):
            break
        p_keep = min(len(p), max(int(prompt_frac * room), room - len(r)))
        r_keep = min(len(r), room - p_keep)
        piece = clip_ids(p, p_keep, "left") + sep + clip_ids(r, r_keep, "right") + sep
        kept.append(piece)
        budget -= len(piece)
    if keep == "left":
        kept.reverse()
    ids = head + [t for piece in kept for t in piece]
    return ids[:max_len]


def special_ids(tokenizer) -> tuple[int | None, int | None]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return cls_id, sep_id


def encode_frame(frame: pd.DataFrame, tokenizer, cfg) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of tower A and tower B for every row. The prompt is tokenized once for both."""
    cut = CHARS_PER_TOKEN * cfg.max_len
    prompts = [as_turns(c) for c in frame["prompt"].tolist()]
    sides = [[as_turns(c) for c in frame[col].tolist()] for col in ("response_a", "response_b")]
    # prompts keep their end, responses their start (matching build_tower's clipping)
    texts = [t[-cut:] for turns in prompts for t in turns]
    for side in sides:
        texts.extend(t[:cut] for turns in side for t in turns)
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)["input_ids"] if texts else []
    pos = iter(ids)
    p_ids = [[next(pos) for _ in turns] for turns in prompts]
    side_ids = [[[next(pos) for _ in turns] for turns in side] for side in sides]
    cls_id, sep_id = special_ids(tokenizer)
    return tuple([build_tower(p, r, cfg.max_len, cfg.truncation_side, cfg.prompt_frac, cls_id, sep_id)
                  for p, r in zip(p_ids, side_r)] for side_r in side_ids)  # type: ignore[return-value]


def truncation_report(frame: pd.DataFrame, tokenizer, cfg) -> dict:
    """How much of each tower's text (prompt + response) survives truncation at max_len: mean share
    of tokens kept and share of battles cut, per side."""
    cut = CHARS_PER_TOKEN * cfg.max_len
    specials = {i for i in special_ids(tokenizer) if i is not None}
    out: dict = {"max_len": cfg.max_len, "battles": int(len(frame))}
    towers = encode_frame(frame, tokenizer, cfg)
    any_cut = np.zeros(len(frame), dtype=bool)
    for side, ids in zip(("response_a", "response_b"), towers):
        texts = [[t[-cut:] for t in as_turns(p)] + [t[:cut] for t in as_turns(r)]
                 for p, r in zip(frame["prompt"], frame[side])]
        lengths = tokenizer([t for row in texts for t in row] or [""], add_special_tokens=False,
                            return_attention_mask=False)["input_ids"]
        pos = iter(lengths)
        total = np.array([sum(len(next(pos)) for _ in row) for row in texts], dtype=float)
        kept = np.array([sum(t not in specials for t in tower) for tower in ids], dtype=float)
        cut_rows = kept < total
        any_cut |= cut_rows
        out[f"tower_{side}"] = {
            "kept_share": round(float(np.where(total > 0, kept / np.maximum(total, 1), 1).mean()), 4),
            "battles_cut": round(float(cut_rows.mean()), 4)}
    out["battles_cut_any"] = round(float(any_cut.mean()), 4)
    return out
