"""The house rules, checked: dvc.yaml's deps cover every project file a stage's command runs (DVC
reruns a stage only when a listed dep changes, so a missing one means stale outputs after a code
change); no import circle; no library file over 400 lines but the demo's text banks."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[Path]:
    """Project files `path` imports (at any depth in the file: lazy imports count), with every
    package __init__ on the way."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    else:
        package = package.removesuffix(".__init__")
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # ensemble, ensemble.models, ensemble.models.lgbm
                f = _module_file(".".join(parts[:i]))
                if f is not None:
                    found.add(f)
    return found


def _closure(start: set[Path]) -> set[Path]:
    seen, todo = set(), list(start)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(_imports(f) - seen)
    return seen


def _entry_files(cmd: str) -> set[Path]:
    from ensemble.models import REGISTRY

    args = shlex.split(cmd)
    files: set[Path] = set()
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            files.add(_module_file(args[i + 1]))
        elif arg.endswith(".py") and (ROOT / arg).is_file():
            files.add(ROOT / arg)
        elif arg in REGISTRY:  # stages/oof.py <model> imports the model's module by name
            files.add(_module_file(REGISTRY[arg].split(":")[0]))
    return files


@pytest.mark.parametrize("stage", sorted(n for n, s in STAGES.items() if "python" in str(s.get("cmd", ""))))
def test_stage_deps_cover_the_code_it_runs(stage):
    spec = STAGES[stage]
    entry = _entry_files(spec["cmd"])
    assert entry, f"{stage}: no python entry point found in {spec['cmd']!r}"
    needed = {f.relative_to(ROOT).as_posix() for f in _closure(entry)}
    declared = {str(d) for d in spec.get("deps", [])}
    missing = sorted(needed - declared)
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not list in deps: {missing}"


def test_no_import_circle_in_the_library():
    """Counting lazy (in-function) imports too: a circle hidden in a function is still a circle."""
    files = sorted((ROOT / "ensemble").rglob("*.py"))
    graph = {f: {g for g in _imports(f) if g != f and g.name != "__init__.py"} for f in files}
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


def test_library_files_stay_under_400_lines():
    long = {f.relative_to(ROOT).as_posix(): n for f in (ROOT / "ensemble").rglob("*.py")
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400}
    assert set(long) <= {"ensemble/demo.py"}, long  # demo.py: the synthetic set's text banks
