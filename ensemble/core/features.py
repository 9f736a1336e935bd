"""Length, structure and repetition features of a battle (LightGBM's numeric block, the dual tower's side
features, shared here).

Arena votes are driven largely by verbosity, markdown formatting and refusals, and older models' answers
by degenerate repetition (PandaLM's 7B models repeat lines until they hit their limit), so these cheap
counts carry most of the non-semantic signal; a few cross features compare each answer with the prompt
(how much of it the answer addresses) and the two answers with each other (look-alike answers tie).
Features are computed per response side (``a_`` / ``b_``) and then paired (``diff_`` / ``ratio_``) so a tree
can split on the comparison directly; the pairing is exactly antisymmetric under an A/B swap, which
keeps swap-augmented training and test-time swap averaging consistent.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np
import pandas as pd

from ensemble.core.cache import RunCache
from ensemble.core.data import as_turns

#: Bump when any feature's definition changes so cached feature files are rebuilt.
FEATURE_VERSION = 3  # 3: repetition and prompt/answer overlap features; 2: a None/NaN cell is one empty turn

# Anchored per line; `[ \t]*` rather than `\s*` so a match never spans blank lines.
_HEADER = re.compile(r"^#{1,6}[ \t]", re.M)
_BULLET = re.compile(r"^[ \t]*[-*+][ \t]", re.M)
_NUMBERED = re.compile(r"^[ \t]*\d+\.[ \t]", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+?\*\*")
_TABLE = re.compile(r"^[ \t]*\|.*\|[ \t]*$", re.M)
_URL = re.compile(r"https?://|www\.")
_WORD = re.compile(r"\w+")
#: A text that ends on one of these looks finished; anything else looks cut off (a model that hit its limit).
_CLEAN_END = tuple(".!?)]}\"'`*:;>")

#: Lower-case refusal / hedging phrases; matched on lower-cased text with either apostrophe.
REFUSAL_PHRASES = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "my apologies",
    "i cannot",
    "i can't",
    "i can not",
    "i won't",
    "as an ai",
    "language model",
    "not able to",
    "unable to",
    "i must decline",
    "not appropriate",
    "against my",
    "i'm not comfortable",
    "ethical guidelines",
)
_REFUSAL = re.compile("|".join(re.escape(p).replace("'", "['\u2019]") for p in REFUSAL_PHRASES))

# Byte-level deletion tables: counting ASCII classes on UTF-8 bytes is far faster than regex
# (multi-byte characters only use bytes >= 0x80, so they never hit an ASCII class).
_KEEP_DIGITS = bytes(b for b in range(256) if not (0x30 <= b <= 0x39))
_KEEP_UPPER = bytes(b for b in range(256) if not (0x41 <= b <= 0x5A))
_KEEP_LEADS = bytes(range(0xC0))  # what remains are UTF-8 lead bytes: one per non-ASCII char

SIDE_FEATURES = (
    "chars", "words", "lines", "log_chars", "log_words",
    "turn_sum", "turn_mean", "turn_max", "turn_median", "turn_std", "turns",
    "headers", "bullets", "numbered", "bold", "code_fences", "table_rows",
    "digits", "questions", "exclaims", "newline_ratio", "upper_ratio", "nonascii_ratio",
    "urls", "refusals", "empty", "unique_ratio",
    "dup_lines", "compress_ratio", "trigram_repeat", "ends_open",
)
PROMPT_FEATURES = ("chars", "words", "turns")
CROSS_FEATURES = ("a_minus_p_chars", "b_minus_p_chars", "a_over_p_chars", "b_over_p_chars",
                  "a_over_p_words", "b_over_p_words",
                  "a_prompt_overlap", "b_prompt_overlap",  # share of the answer's distinct words found in the prompt
                  "a_prompt_cover", "b_prompt_cover",  # share of the prompt's distinct words the answer uses
                  "ab_jaccard", "ab_same")  # the two answers' word-set overlap, and identical answers (swap-symmetric)


def feature_names() -> list[str]:
    """Column order of numeric_features (fixed so saved models line up with new frames)."""
    return ([f"a_{f}" for f in SIDE_FEATURES] + [f"b_{f}" for f in SIDE_FEATURES]
            + [f"p_{f}" for f in PROMPT_FEATURES]
            + [f"diff_{f}" for f in SIDE_FEATURES] + [f"ratio_{f}" for f in SIDE_FEATURES]
            + list(CROSS_FEATURES))



def _count(texts: pd.Series, pattern: re.Pattern) -> np.ndarray:
    return texts.str.count(pattern).to_numpy(dtype=np.float64)


def _turn_stats(turn_lists: list[list[str]]) -> dict[str, np.ndarray]:
    counts = np.fromiter((len(t) for t in turn_lists), dtype=np.int64, count=len(turn_lists))
    lengths = np.fromiter((len(s) for turns in turn_lists for s in turns), dtype=np.float64,
                          count=int(counts.sum()))
    rows = np.repeat(np.arange(len(turn_lists)), counts)
    grouped = pd.Series(lengths).groupby(rows)
    index = pd.RangeIndex(len(turn_lists))

    def stat(values: pd.Series) -> np.ndarray:
        return values.reindex(index, fill_value=0.0).to_numpy(dtype=np.float64)

    return {
        "turn_sum": stat(grouped.sum()),
        "turn_mean": stat(grouped.mean()),
        "turn_max": stat(grouped.max()),
        "turn_median": stat(grouped.median()),
        "turn_std": stat(grouped.std(ddof=0)),
        "turns": counts.astype(np.float64),
    }


def _repetition(text: str) -> tuple[float, float, float]:
    """(share of non-empty lines repeating an earlier line, zlib-compressed / raw size, share of word
    trigrams that repeat an earlier one): degenerate repetition compresses well and repeats itself."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    dup = (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
    raw = text.encode("utf-8", "surrogatepass")
    ratio = min(1.0, len(zlib.compress(raw, 6)) / len(raw)) if raw else 1.0  # short texts: zlib's header > 1
    words = text.split()
    grams = list(zip(words, words[1:], words[2:]))
    repeat = (len(grams) - len(set(grams))) / len(grams) if grams else 0.0
    return dup, ratio, repeat


def _side_features(cells: pd.Series) -> dict[str, np.ndarray]:
    turn_lists = [as_turns(c) for c in cells.tolist()]
    texts_list = ["\n".join(t) for t in turn_lists]
    texts = pd.Series(texts_list, dtype=object)

    chars = np.fromiter((len(s) for s in texts_list), dtype=np.float64, count=len(texts_list))
    denom = np.maximum(chars, 1.0)
    tokens = [s.split() for s in texts_list]
    words = np.fromiter((len(t) for t in tokens), dtype=np.float64, count=len(tokens))
    unique = np.fromiter((len(set(t)) for t in tokens), dtype=np.float64, count=len(tokens))
    del tokens
    newlines = np.fromiter((s.count("\n") for s in texts_list), dtype=np.float64, count=len(texts_list))

    def literal(sub: str) -> np.ndarray:
        return np.fromiter((s.count(sub) for s in texts_list), dtype=np.float64, count=len(texts_list))

    byte_counts = np.zeros((len(texts_list), 3), dtype=np.float64)
    for i, s in enumerate(texts_list):
        raw = s.encode("utf-8", "surrogatepass")
        byte_counts[i] = (len(raw.translate(None, _KEEP_DIGITS)), len(raw.translate(None, _KEEP_UPPER)),
                          len(raw.translate(None, _KEEP_LEADS)))

    lower = texts.str.lower()
    out = {
        "chars": chars,
        "words": words,
        "lines": np.where(chars > 0, newlines + 1.0, 0.0),
        "log_chars": np.log1p(chars),
        "log_words": np.log1p(words),
        **_turn_stats(turn_lists),
        "headers": _count(texts, _HEADER),
        "bullets": _count(texts, _BULLET),
        "numbered": _count(texts, _NUMBERED),
        "bold": _count(texts, _BOLD),
        "code_fences": literal("```"),
        "table_rows": _count(texts, _TABLE),
        "digits": byte_counts[:, 0],
        "questions": literal("?"),
        "exclaims": literal("!"),
        "newline_ratio": newlines / denom,
        "upper_ratio": byte_counts[:, 1] / denom,
        "nonascii_ratio": byte_counts[:, 2] / denom,
        "urls": _count(texts, _URL),
        "refusals": _count(lower, _REFUSAL),
        "empty": np.fromiter((not s.strip() for s in texts_list), dtype=np.float64, count=len(texts_list)),
        "unique_ratio": unique / np.maximum(words, 1.0),
        **dict(zip(("dup_lines", "compress_ratio", "trigram_repeat"),
                   np.array([_repetition(t) for t in texts_list], dtype=np.float64).reshape(-1, 3).T)),
        "ends_open": np.fromiter((bool(s.strip()) and not s.rstrip().endswith(_CLEAN_END) for s in texts_list),
                                 dtype=np.float64, count=len(texts_list)),
    }
    return {name: out[name] for name in SIDE_FEATURES}


#: A run's response-feature store holds at most this many responses (then it starts afresh).
SIDE_CACHE_MAX = 1_000_000


def _cached_side_features(cells: pd.Series, cache: RunCache | None) -> dict[str, np.ndarray]:
    """Per-response features, each distinct response computed once per run: the OOF runner featurizes
    the same responses once per fold and again swapped, and a response's features do not depend on
    its side, fold or partner."""
    keys = [tuple(as_turns(c)) for c in cells.tolist()]
    store = cache.store("features.side", FEATURE_VERSION) if cache is not None else {}
    missing = list(dict.fromkeys(k for k in keys if k not in store))
    if missing:
        if len(store) + len(missing) > SIDE_CACHE_MAX:
            store.clear()
        computed = _side_features(pd.Series([list(k) for k in missing], dtype=object))
        table = np.column_stack([computed[name] for name in SIDE_FEATURES])
        store.update(zip(missing, table))
    rows = np.array([store[k] for k in keys]).reshape(len(keys), len(SIDE_FEATURES))
    return {name: rows[:, j] for j, name in enumerate(SIDE_FEATURES)}


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


OVERLAP_NAMES = ("a_prompt_overlap", "b_prompt_overlap", "a_prompt_cover", "b_prompt_cover", "ab_jaccard", "ab_same")


def _overlap_row(p: str, a: str, b: str) -> tuple[float, ...]:
    wp, wa, wb = _words(p), _words(a), _words(b)
    return (len(wa & wp) / len(wa) if wa else 0.0, len(wb & wp) / len(wb) if wb else 0.0,
            len(wa & wp) / len(wp) if wp else 0.0, len(wb & wp) / len(wp) if wp else 0.0,
            len(wa & wb) / len(wa | wb) if wa | wb else 1.0, float(a.strip() == b.strip()))


def _overlaps(frame: pd.DataFrame, p_texts: list[str], cache: RunCache | None) -> dict[str, np.ndarray]:
    """Word-set overlaps of each answer with the prompt, and of the two answers with each other; each
    battle (in each order) computed once per run, keyed by a digest of its texts (the OOF runner
    featurizes a battle in every fold's training part, and the test battles once per fold)."""
    a_texts = ["\n".join(as_turns(c)) for c in frame["response_a"].tolist()]
    b_texts = ["\n".join(as_turns(c)) for c in frame["response_b"].tolist()]
    keys = [hashlib.blake2b("\0".join(t).encode("utf-8", "surrogatepass"), digest_size=16).digest()
            for t in zip(p_texts, a_texts, b_texts)]
    store = cache.store("features.overlap", FEATURE_VERSION) if cache is not None else {}
    if len(store) + len(keys) > SIDE_CACHE_MAX:
        store.clear()
    for key, texts in zip(keys, zip(p_texts, a_texts, b_texts)):
        if key not in store:
            store[key] = _overlap_row(*texts)
    rows = np.array([store[k] for k in keys], dtype=np.float64).reshape(len(keys), len(OVERLAP_NAMES))
    return {name: rows[:, j] for j, name in enumerate(OVERLAP_NAMES)}


def numeric_features(frame: pd.DataFrame, cache: RunCache | None = None) -> pd.DataFrame:
    """Numeric features of a parsed battle frame, one row per battle in input order; `cache` (the run's)
    keeps each response's features for the other folds."""
    a = _cached_side_features(frame["response_a"], cache)
    b = _cached_side_features(frame["response_b"], cache)
    p_turns = [as_turns(c) for c in frame["prompt"].tolist()]
    p_texts = ["\n".join(t) for t in p_turns]
    p = {
        "chars": np.fromiter((len(s) for s in p_texts), dtype=np.float64, count=len(p_texts)),
        "words": np.fromiter((len(s.split()) for s in p_texts), dtype=np.float64, count=len(p_texts)),
        "turns": np.fromiter((len(t) for t in p_turns), dtype=np.float64, count=len(p_turns)),
    }
    cols: dict[str, np.ndarray] = {}
    cols.update({f"a_{k}": v for k, v in a.items()})
    cols.update({f"b_{k}": v for k, v in b.items()})
    cols.update({f"p_{k}": v for k, v in p.items()})
    cols.update({f"diff_{k}": a[k] - b[k] for k in SIDE_FEATURES})
    cols.update({f"ratio_{k}": (a[k] + 1.0) / (b[k] + 1.0) for k in SIDE_FEATURES})
    cols["a_minus_p_chars"] = a["chars"] - p["chars"]
    cols["b_minus_p_chars"] = b["chars"] - p["chars"]
    cols["a_over_p_chars"] = (a["chars"] + 1.0) / (p["chars"] + 1.0)
    cols["b_over_p_chars"] = (b["chars"] + 1.0) / (p["chars"] + 1.0)
    cols["a_over_p_words"] = (a["words"] + 1.0) / (p["words"] + 1.0)
    cols["b_over_p_words"] = (b["words"] + 1.0) / (p["words"] + 1.0)
    cols.update(_overlaps(frame, p_texts, cache))
    names = feature_names()
    return pd.DataFrame({n: cols[n].astype(np.float32) for n in names}, index=pd.RangeIndex(len(frame)))
