"""The house rules, checked: dvc.yaml's deps cover every project file a stage's command runs (DVC reruns a
stage only when a listed dep changes, so a missing one means stale outputs after a code change; deps name
packages, and the fold fingerprint tracks which of their files a model imports); no import circle; no model
imports another model's package; no library file over 400 lines without a stated reason (800 at most); model names
are written in the registry only."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from ensemble.core.fingerprint import file_closure, file_imports, module_file

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
REGISTRY_YAML = yaml.safe_load((ROOT / "ensemble" / "models" / "registry.yaml").read_text())["models"]


def _stages() -> dict[str, dict]:
    """dvc.yaml's stages with `foreach` expanded (the model template once per registered model)."""
    out = {}
    for name, spec in DVC["stages"].items():
        if "foreach" not in spec:
            out[name] = spec
            continue
        assert spec["foreach"] == "${models}", f"{name}: foreach over something other than the registry"
        for key, item in REGISTRY_YAML.items():
            text = yaml.safe_dump(spec["do"]).replace("${key}", key).replace("${item.reads}", item["reads"])
            out[f"{name}@{key}"] = yaml.safe_load(text)
    return out


STAGES = _stages()


def _entry_files(cmd: str) -> set[Path]:
    from ensemble.models import REGISTRY

    args = shlex.split(cmd)
    files: set[Path] = set()
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            files.add(module_file(args[i + 1], ROOT))
        elif arg.endswith(".py") and (ROOT / arg).is_file():
            files.add(ROOT / arg)
        elif arg in REGISTRY:  # stages/oof.py <model> imports the model's module by name
            files.add(module_file(REGISTRY[arg].split(":")[0], ROOT))
    return files


@pytest.mark.parametrize("stage", sorted(n for n, s in STAGES.items() if "python" in str(s.get("cmd", ""))))
def test_stage_deps_cover_the_code_it_runs(stage):
    spec = STAGES[stage]
    entry = _entry_files(spec["cmd"])
    assert entry, f"{stage}: no python entry point found in {spec['cmd']!r}"
    needed = {f.relative_to(ROOT).as_posix() for f in file_closure(entry, ROOT)}
    declared = [str(d).rstrip("/") for d in spec.get("deps", [])]
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d + "/") for d in declared))
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not list in deps: {missing}"


def test_the_dvc_model_stages_are_the_registry():
    from ensemble.models import REGISTRY

    assert DVC["vars"] == ["ensemble/models/registry.yaml"]
    assert sorted(n.split("@")[1] for n in STAGES if n.startswith("model@")) == sorted(REGISTRY)


def test_model_names_are_written_in_the_registry_only():
    """No library file, stage script, dvc.yaml or profile spells a model's name as a string but the model's
    own package and the registry; defaults derive the list from the registry."""
    names = list(REGISTRY_YAML)
    files = [*(ROOT / "ensemble").rglob("*.py"), *(ROOT / "stages").glob("*.py"), ROOT / "dvc.yaml"]
    offenders = []
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        text = f.read_text(encoding="utf-8")
        for name in names:
            if rel.startswith(f"ensemble/models/{name}/"):
                continue
            if f'"{name}"' in text or f"'{name}'" in text:
                offenders.append(f"{rel}: {name}")
    allowed = {"ensemble/blend/config.py: lgbm", "ensemble/blend/config.py: llm"}  # the seeds' hand-set 0.2/0.8
    assert sorted(set(offenders) - allowed) == []


def test_no_import_circle_in_the_library():
    """Counting lazy (in-function) imports too: a circle hidden in a function is still a circle."""
    files = sorted((ROOT / "ensemble").rglob("*.py"))
    graph = {f: {g for g in file_imports(f, ROOT) if g != f and g.name != "__init__.py"} for f in files}
    state: dict[Path, int] = {}

    def visit(f: Path, path: list[Path]) -> None:
        state[f] = 1
        for g in graph.get(f, ()):
            if state.get(g) == 1:
                cycle = path[path.index(g):] + [g] if g in path else [f, g]
                raise AssertionError("import circle: " + " -> ".join(p.relative_to(ROOT).as_posix() for p in cycle))
            if g not in state:
                visit(g, path + [g])
        state[f] = 2

    for f in files:
        if f not in state:
            visit(f, [f])


def test_no_model_imports_another_models_package_and_core_imports_no_model():
    models = ROOT / "ensemble" / "models"
    packages = [p for p in models.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    for f in (ROOT / "ensemble").rglob("*.py"):
        own = next((p for p in packages if p in f.parents), None)
        imported = {g for g in file_imports(f, ROOT)}
        for p in packages:
            if p is own:
                continue
            bad = sorted(g.relative_to(ROOT).as_posix() for g in imported if p in g.parents)
            if (own is not None or f.is_relative_to(ROOT / "ensemble" / "core")
                    or f.is_relative_to(ROOT / "ensemble" / "nn")):
                assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


#: library files past the 400-line guide, and why they read better whole than split; none past 800
LONG_FILES = {
    "ensemble/demo.py": "the synthetic set's text banks",
    "ensemble/plan/__init__.py": "every stage's FLOPs, memory and time in one place, formulas beside their sources",
    "ensemble/models/llm/model.py": "the LLM read top to bottom: collate, probe, LoRA fine-tuning, calibration",
    "ensemble/models/dual_tower/model.py": "the dual tower read top to bottom: towers, head, training, calibration",
}


def test_library_files_past_400_lines_say_why():
    long = {f.relative_to(ROOT).as_posix(): n for f in (ROOT / "ensemble").rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400}
    assert set(long) <= set(LONG_FILES), long
    assert max(long.values(), default=0) <= 800, long
