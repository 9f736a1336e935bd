"""What a fold learned from, as one FoldIdentity of named digests: its learned config, its training
rows (ids, texts, labels; not the rows it validates on), the folds, the code the model declares it
learns with, the versions of the libraries that change its numbers, the pretrained weights it starts
from and, for a student, its teachers. A finished fold is reused only while every part still
matches, and submit names the part that does not. `Identities` builds them, for the OOF runner, the
teacher cache, submit, the bundle and the Judge alike (a student's teachers part:
ensemble.pipeline.distill.teachers_digest).

What does not change what a model learns (devices, inference batch budgets, log messages) is not
part of it: each model lists those keys as `runtime_keys` (ensemble.models.base), and the modules
that only move bytes or report are PLUMBING.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ensemble.core.data import TEXT_COLUMNS

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `ensemble` package
#: hub cache blobs are named by their content's sha256 (git-lfs), so a snapshot's weights need no hashing
_BLOB_DIR = "blobs"

#: project modules a model imports that never change what it learns, and why: a model's declared code
#: (BaseModel.learns_with) plus these must cover every module it imports (tests/test_fingerprint.py)
PLUMBING = {
    "ensemble.core": "package marker",
    "ensemble.nn": "package marker",
    "ensemble.models": "the registry: finds a model's class",
    "ensemble.core.cache": "the run's in-memory stores",
    "ensemble.core.cli": "exit codes and error lines",
    "ensemble.core.errors": "error types",
    "ensemble.core.io": "atomic writes",
    "ensemble.core.progress": "log lines",
    "ensemble.core.predictions": "checks and files of predictions",
    "ensemble.core.config": "the params parser: what it yields is the config part",
    "ensemble.core.formats": "file readers: what they yield is the data part",
    "ensemble.core.preference": "file readers: what they yield is the data part",
    "ensemble.core.fingerprint": "these digests",
    "ensemble.nn.convert": "the GGUF converter: what it writes is the backbone part",
}


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


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """ensemble/core/data.py -> ensemble.core.data; a package's __init__.py -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def file_closure(files: Iterable[Path], root: Path = PACKAGE_ROOT, opaque: Iterable[str] = ()) -> list[Path]:
    """`files` and every project file they import, transitively, sorted; the imports of the `opaque`
    modules are not followed."""
    opaque = set(opaque)
    todo, seen = list(files), set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if module_name(f, root) not in opaque:
            todo.extend(file_imports(f, root) - seen)
    return sorted(seen)


def import_closure(modules: Iterable[str], root: Path = PACKAGE_ROOT, opaque: Iterable[str] = ()) -> list[Path]:
    """Every project file that importing `modules` runs (not following the imports of `opaque` ones)."""
    return file_closure([f for m in modules if (f := module_file(m, root)) is not None], root, opaque)


def undeclared_imports(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[str]:
    """Project modules that `modules` import, at any depth, that are neither among `modules` nor
    PLUMBING (whose own imports are its business): a model's declared code must leave none, so a new
    import forces a decision."""
    found = {module_name(f, root) for f in import_closure(modules, root, opaque=PLUMBING)}
    return sorted(found - set(modules) - set(PLUMBING))


def code_digest(modules: Iterable[str]) -> str:
    """sha256 over the paths and bytes of the files of `modules` (a model's declared code): editing
    any other file (a log message, the report, another model) leaves it unchanged."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        path = module_file(name, PACKAGE_ROOT)
        if path is None:  # a module outside the package (a model living in a test folder)
            continue
        h.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def library_versions(names: Iterable[str]) -> str:
    """'name==version' of each installed distribution, sorted ('name absent' when not installed)."""
    found = []
    for name in sorted(set(names)):
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


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


def text_digests(frame: pd.DataFrame) -> list[str]:
    """A short digest of each battle's texts (every turn), in row order."""
    out = []
    for cells in zip(*(frame[c] for c in TEXT_COLUMNS)):
        h = hashlib.blake2b(digest_size=8)
        for cell in cells:
            turns = [cell] if isinstance(cell, str) else list(cell)
            joined = "\x1f".join("" if t is None else str(t) for t in turns)
            h.update(joined.encode("utf-8", "surrogatepass") + b"\x1e")
        out.append(h.hexdigest())
    return out


def row_digests(frame: pd.DataFrame) -> dict[str, str]:
    """id -> a short digest of that battle's texts: kept with cached test predictions, so predictions made
    for other texts under the same ids are never reused."""
    return dict(zip(frame["id"].astype(str), text_digests(frame)))


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


# ------------------------------------------------------------------------------------------- identity

#: a finished fold's record in its folder: its identity's key ("fingerprint") and parts, written last
DONE_FILE = "done.json"


def read_done(fold_dir: Path) -> dict:
    """A finished fold's done.json ({} when absent or unreadable: the fold is not finished)."""
    try:
        done = json.loads((fold_dir / DONE_FILE).read_text(encoding="utf-8"))
        return done if isinstance(done, dict) else {}
    except (OSError, ValueError):
        return {}



def model_parts(model) -> dict[str, str]:
    """What a model (ensemble.models.base) learns from apart from its rows: its learned config, the code
    it declares, the versions of the libraries that change its numbers and its pretrained weights."""
    return {"config": config_digest({"model": model.name, "config": model.learned_config()}),
            "code": code_digest(model.code_modules()),
            "libraries": library_versions(model.library_names()),
            "backbone": model.backbone_identity() or "none"}


@dataclass(frozen=True)
class FoldIdentity:
    """What one fit learned from, as named digests: config, code, libraries, backbone (the model's),
    data (its training rows), folds, fold (the folds it was fitted without) and teachers."""

    parts: dict[str, str]

    @property
    def key(self) -> str:
        return combine(self.parts)

    def changed(self, saved: dict) -> list[str]:
        """The names of the parts that differ from `saved` (a finished fold's parts), in order."""
        return [name for name, value in self.parts.items() if saved.get(name) != value]


class Identities:
    """The FoldIdentity of every fit of one model on one training frame with one fold assignment. What all
    fits share is computed once: the model's parts (the backbone digest reads its weights) and a digest
    per row (id, texts, label), so a fit's rows cost a join, not a pass over the texts."""

    def __init__(self, model, train: pd.DataFrame, fold_of: np.ndarray, teachers: str = "none"):
        self.model_parts = model_parts(model)
        self.fold_of = np.asarray(fold_of, dtype=np.int64)
        self.folds = array_digest(self.fold_of)
        self.teachers = teachers
        self.with_valid = model.learns_from_valid()  # e.g. LightGBM's early stopping on the fold's valid rows
        labels = train["label"].astype(str) if "label" in train else pd.Series([""] * len(train))
        self.rows = np.array([f"{i}\x1f{t}\x1f{y}" for i, t, y in
                              zip(train["id"].astype(str), text_digests(train), labels)], dtype=object)

    def rows_digest(self, mask: np.ndarray) -> str:
        """The ids, texts and labels of the rows `mask` selects, in row order."""
        return _sha256("\x1e".join(self.rows[mask]).encode("utf-8", "surrogatepass"))

    def of(self, *held: int) -> FoldIdentity:
        """The fit on the rows outside the folds `held`: fold k's model is of(k), a nested teacher fit of(k, j).
        Its data part is those rows, and the held-out rows too where the model chooses on them."""
        training = np.ones(len(self.fold_of), dtype=bool) if self.with_valid else ~np.isin(self.fold_of, held)
        return FoldIdentity({**self.model_parts, "data": self.rows_digest(training), "folds": self.folds,
                             "fold": ",".join(str(k) for k in held), "teachers": self.teachers})

    def full(self) -> FoldIdentity:
        """The fit on every training row (`refit_full`): no folds held out, so none in its identity (a
        new draw of the folds keeps it)."""
        return FoldIdentity({**self.model_parts, "data": self.rows_digest(np.ones(len(self.fold_of), dtype=bool)),
                             "fold": "full", "teachers": self.teachers})
