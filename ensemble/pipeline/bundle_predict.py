"""Offline prediction from a bundle made by `python -m ensemble.bundle` (this file is copied to OUT/predict.py).

    python predict.py test.csv -o submission.csv [--no-install]

1. every file listed in bundle.json must be there (a missing wheel or fold is one line, exit 2);
2. the pinned packages the running Python lacks, or has at another version, and the project itself are
   installed from wheels/ with `pip install --no-index --find-links wheels --no-deps`: no network;
3. `python -m ensemble.submit` runs from this folder with HF_HUB_OFFLINE=1 (and the bundled hub cache).
Standard library only until step 3.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_for(name: str, version: str, wheels: list[Path]) -> Path | None:
    for w in wheels:  # {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl, name with underscores
        parts = w.name.split("-")
        if len(parts) >= 5 and canon(parts[0]) == canon(name) and parts[1] == version:
            return w
    return None


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_pins(pins: dict[str, str]) -> dict[str, str]:
    """The pins this Python lacks or has at another version."""
    return {name: version for name, version in pins.items() if installed_version(name) != version}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("test", type=Path, help="test battles (.csv, .jsonl or .parquet, any accepted layout)")
    ap.add_argument("-o", "--output", type=Path, default=Path("submission.csv"))
    ap.add_argument("--no-install", action="store_true", help="use the running Python's packages as they are")
    args = ap.parse_args()
    manifest_path = HERE / "bundle.json"
    if not manifest_path.is_file():
        fail(f"{manifest_path}: missing; this folder is not a bundle made by `python -m ensemble.bundle`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files, pins = dict(manifest["files"]), dict(manifest["requirements"])
    except (ValueError, KeyError, TypeError) as exc:
        fail(f"{manifest_path}: not a readable bundle manifest ({exc})")
    gone = [rel for rel in files if rel != "bundle.json" and not (HERE / rel).is_file()]
    if gone:
        fail(f"{HERE}: {len(gone)} file(s) of the bundle missing, e.g. {', '.join(gone[:3])}; upload the whole folder")
    short = [rel for rel, size in files.items() if rel != "bundle.json" and (HERE / rel).stat().st_size != size]
    if short:
        fail(f"{HERE}: {len(short)} file(s) changed size since bundling, e.g. {', '.join(short[:3])}")
    if not args.test.is_file():
        fail(f"{args.test}: no such test file")
    if not args.no_install:
        wheels = sorted((HERE / "wheels").glob("*.whl"))
        todo = missing_pins(pins)
        project = [w for w in wheels if canon(w.name.split("-")[0]) == "arena-ensemble"]
        if not project:
            fail(f"{HERE / 'wheels'}: no arena_ensemble wheel; rebuild the bundle with wheels")
        files_to_install = []
        for name, version in todo.items():
            w = wheel_for(name, version, wheels)
            if w is None:
                fail(f"{HERE / 'wheels'}: no wheel for {name}=={version}, which this Python lacks; rebuild the "
                     f"bundle, or install it by hand")
            files_to_install.append(str(w))
        built, here = (manifest.get("built_with") or {}).get("torch"), installed_version("torch")
        if built and here and here.split("+")[0] != built.split("+")[0]:
            print(f"warning: torch {here} here, the bundle was built and tested with torch {built}", file=sys.stderr)
        print(f"installing {len(files_to_install) + 1} wheel(s) from {HERE / 'wheels'} (offline; the project's "
              f"always, so the code is the bundle's)", file=sys.stderr)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links",
               str(HERE / "wheels")]
        installs = ([files_to_install] if files_to_install else []) + [["--force-reinstall", str(project[0])]]
        for args_ in installs:
            rc = subprocess.run(pip + args_).returncode
            if rc:
                fail(f"pip could not install the bundle's wheels (exit {rc}); see its message above")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    if manifest.get("hub"):
        env["HF_HUB_CACHE"] = str(HERE / "hub")
    # --skip-code-check: the code (the bundled wheel) and the library versions were checked when the bundle was
    # built; the target's own packages (torch, by default) are not the bundle's to refuse
    cmd = [sys.executable, "-m", "ensemble.submit", str(args.test.resolve()), "-o", str(args.output.resolve()),
           "--artifacts", "artifacts", "--params", "params.yaml", "--skip-code-check"]
    return subprocess.run(cmd, cwd=HERE, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
