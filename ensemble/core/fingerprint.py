"""Identities of what a fold learned from, as digests: the training rows (ids, texts, labels), the
folds, the config, the code the model runs and the pretrained weights it starts from. A finished fold
is reused only while every part still matches, and submit names the part that does not.

What does not change what a model learns (devices, inference batch budgets) is not part of it: each
model lists those keys as `runtime_keys` (ensemble.models.base).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.data import TEXT_COLUMNS

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `ensemble` package
#: hub cache blobs are named by their content's sha256 (git-lfs), so a snapshot's weights need no hashing
_BLOB_DIR = "blobs"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------- code

def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    path = root.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def file_imports(path: Path, root: Path = PACKAGE_ROOT, package_prefix: str = "ensemble") -> set[Path]:
    """Project files `path` imports, at any depth in the file (lazy imports count), with every package
    __init__ on the way (importing ensemble.models.lgbm runs ensemble/__init__ and ensemble/models/__init__)."""
    rel = path.resolve().relative_to(root).with_suffix("")
    parts = list(rel.parts)
    package = ".".join(parts[:-1]) if parts[-1] != "__init__" else ".".join(parts[:-1])
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(p for p in [*up, base] if p)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if not name.startswith(package_prefix):
                continue
            bits = name.split(".")
            for i in range(1, len(bits) + 1):
                f = module_file(".".join(bits[:i]), root)
                if f is not None:
                    found.add(f)
    return found


def file_closure(files: Iterable[Path], root: Path = PACKAGE_ROOT) -> list[Path]:
    """`files` and every project file they import, transitively, sorted."""
    todo, seen = list(files), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(file_imports(f, root) - seen)
    return sorted(seen)


def import_closure(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every project file that importing `modules` runs: the code a model's fit depends on."""
    return file_closure([f for m in modules if (f := module_file(m, root)) is not None], root)


def code_digest(modules: Iterable[str]) -> str:
    """sha256 over the paths and bytes of the files `modules` import: editing the report or another model
    leaves it unchanged; editing anything the model runs changes it."""
    h = hashlib.sha256()
    for path in import_closure(modules):
        h.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- data

def frame_digest(frame: pd.DataFrame) -> str:
    """Ids, every text (turn by turn) and, when present, the labels of a battle frame, in row order."""
    h = hashlib.sha256()
    h.update("\x1e".join(frame["id"].astype(str)).encode("utf-8", "surrogatepass"))
    for col in TEXT_COLUMNS:
        h.update(b"\x1d" + col.encode())
        for cell in frame[col]:
            turns = [cell] if isinstance(cell, str) else list(cell)
            h.update("\x1f".join("" if t is None else str(t) for t in turns).encode("utf-8", "surrogatepass") + b"\x1e")
    if "label" in frame:
        h.update(np.ascontiguousarray(frame["label"].to_numpy(dtype=np.int64)).tobytes())
    return h.hexdigest()


def row_digests(frame: pd.DataFrame) -> dict[str, str]:
    """id -> a short digest of that battle's texts: kept with cached test predictions, so predictions made
    for other texts under the same ids are never reused."""
    out = {}
    for i, *cells in zip(frame["id"].astype(str), *(frame[c] for c in TEXT_COLUMNS)):
        h = hashlib.blake2b(digest_size=8)
        for cell in cells:
            turns = [cell] if isinstance(cell, str) else list(cell)
            h.update("\x1f".join("" if t is None else str(t) for t in turns).encode("utf-8", "surrogatepass") + b"\x1e")
        out[i] = h.hexdigest()
    return out


def config_digest(config: dict) -> str:
    return _sha256(json.dumps(config, sort_keys=True, default=str).encode())


def array_digest(values: np.ndarray) -> str:
    return _sha256(np.ascontiguousarray(values).tobytes())


def combine(parts: dict[str, str]) -> str:
    """One key from named digests (order-independent)."""
    return _sha256(json.dumps(parts, sort_keys=True).encode())


# -------------------------------------------------------------------------------------------- weights

def file_digest(path: Path) -> str:
    """A file's content sha256; a hub-cache file (a link into blobs/) is named by it already."""
    real = Path(os.path.realpath(path))
    if real.parent.name == _BLOB_DIR and len(real.name) == 64:
        return real.name
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def folder_digest(folder: str | os.PathLike) -> str:
    """Every file of a model folder (weights, config, tokenizer), by relative path and content."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()


def backbone_digest(name_or_folder: str) -> str:
    """Identity of pretrained weights: a folder's content digest, or for a hub id the revision of the
    cached snapshot it loads from (the id alone when nothing is cached; loading then fails anyway)."""
    if os.path.isdir(name_or_folder):
        return "folder:" + folder_digest(name_or_folder)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name_or_folder, "config.json")
    except Exception:  # noqa: BLE001 - an odd id is not ours to judge here
        found = None
    if isinstance(found, str):
        return f"hub:{name_or_folder}@{Path(found).parent.name}"
    return f"hub:{name_or_folder}"


def tensor_digest(named, head: str = "") -> str:
    """sha1 over (name, raw bytes) of named tensors: the identity of a set of loaded weights."""
    import torch

    h = hashlib.sha1(head.encode())
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return h.hexdigest()


def model_parts(model, train: pd.DataFrame, fold_of: np.ndarray) -> dict[str, str]:
    """The named digests every fold's fingerprint combines (with the fold's number) for a base model
    (ensemble.models.base) trained on `train` with the folds `fold_of`; submit compares them one by one
    to say which changed."""
    return {"config": config_digest({"model": model.name, "config": model.learned_config()}),
            "data": frame_digest(train), "folds": array_digest(np.asarray(fold_of, dtype=np.int64)),
            "code": code_digest([type(model).__module__]), "backbone": model.backbone_identity() or "none"}


def fold_parts(common: dict[str, str], fold: int) -> dict[str, str]:
    """The parts of fold `fold`'s fingerprint from its model's parts (model_parts); run_oof adds a
    student's `teachers` part, and a student reuses a teacher's saved fold when they match."""
    return {**common, "fold": str(fold)}
