"""Apply a params profile: `python -m ensemble.profile profiles/real-cpu.yaml [--set key=value ...]`.

A profile is a partial params.yaml (a real CPU run, a GPU run). Its keys are merged into params.yaml
in place, comments kept (ruamel.yaml round trip, which DVC itself uses for `dvc exp run -S`); every
key must already exist there, and the result is checked like any params before it is written.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import yaml

from ensemble.core.cli import fail_cleanly
from ensemble.core.config import DEFAULT_PARAMS, ConfigError, load_params
from ensemble.core.io import write_text
from ensemble.pipeline.sections import check_params


def _merge(target, overlay: dict, where: str, changes: list[str]) -> None:
    for key, value in overlay.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in target:
            raise ConfigError(f"profile key {name} is not in params.yaml (known here: {', '.join(map(str, target))})")
        if isinstance(target[key], dict) != isinstance(value, dict):  # `llm:` left empty would wipe the section
            raise ConfigError(f"profile key {name}: {value!r} would replace "
                              f"{'a section of keys' if isinstance(target[key], dict) else repr(target[key])}; "
                              f"give {'its keys, indented under it' if isinstance(target[key], dict) else 'a value'}")
        if isinstance(value, dict):
            _merge(target[key], value, name, changes)
        elif target[key] != value:
            changes.append(f"{name}: {target[key]!r} -> {value!r}")
            target[key] = value


def parse_sets(items: list[str]) -> dict:
    """--set key=value items as a nested mapping (the value read as YAML)."""
    overlay: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. data.train=data/train.csv")
        node = overlay
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return overlay


def _represent_float(representer, value: float):
    """1e-05 is a string to YAML 1.1 readers (PyYAML); write 1.0e-05."""
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def apply_profile(profile: Path | None, sets: list[str], params_path: Path = DEFAULT_PARAMS) -> list[str]:
    from ruamel.yaml import YAML

    overlays = []
    if profile is not None:
        overlays.append(load_params(profile))
    overlays.append(parse_sets(sets))
    rt = YAML()
    rt.preserve_quotes = True
    rt.representer.add_representer(float, _represent_float)
    load_params(params_path)  # a clear error for a missing or broken params file
    doc = rt.load(params_path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ConfigError(f"{params_path}: empty or not a mapping of sections; nothing to apply a profile to")
    changes: list[str] = []
    for overlay in overlays:
        _merge(doc, overlay, "", changes)
    buf = io.StringIO()
    rt.dump(doc, buf)
    checked = check_params(yaml.safe_load(buf.getvalue()), str(params_path))  # every section, before writing
    write_text(params_path, buf.getvalue())
    data = checked.get("data")
    for key in ("train", "test") if data is not None else ():  # a warning: the files may be copied in later
        if not (params_path.parent / getattr(data, key)).is_file():
            print(f"warning: data.{key} {getattr(data, key)} does not exist (yet); `dvc repro` fails until it does",
                  file=sys.stderr)
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, nargs="?", help="a partial params file, e.g. profiles/real-cpu.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="one more key, e.g. --set data.train=data/train.csv (applied after the profile)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    args = parser.parse_args(argv)
    changes = apply_profile(args.profile, args.sets, args.params)
    print("\n".join(changes) if changes else "params.yaml already matches")
    return 0


if __name__ == "__main__":
    sys.exit(fail_cleanly(main))
