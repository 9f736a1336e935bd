"""The documentation holds together: no dead relative link or anchor in README.md and docs/*.md,
every params key on the params reference page exactly once, a README short enough to read in
minutes, and its Judge example runs on a finished run."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

import pytest
import test_submit
import yaml
from test_submit import params_for

from ensemble.models import REGISTRY
from ensemble.pipeline.sections import section_class, sections

ROOT = Path(__file__).resolve().parents[1]
PARAMS_PAGE = Path("docs/params.md")
README_MAX_LINES = 150
#: a `<model>.key` row documents the key for every registered model that has it
MODEL = "<model>"

# test_submit's small finished LightGBM run (3 folds, 120 training battles), its code digest pinned
fixed_code_digest, finished = test_submit.fixed_code_digest, test_submit.finished

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def doc_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup dropped, lower case, punctuation but - and _
    removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: Counter = Counter()
    found = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def dead_links(root: Path) -> list[str]:
    """Relative links (outside code) whose file or anchor does not exist, as 'file: link (why)'."""
    dead = []
    for page in doc_files(root):
        for line in prose_lines(page.read_text(encoding="utf-8")):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(root)}: {target}"
                if not file.exists():
                    dead.append(f"{where} (no such file)")
                elif anchor and file.suffix != ".md":
                    dead.append(f"{where} (an anchor into a file that is not markdown)")
                elif anchor and anchor not in anchors(file.read_text(encoding="utf-8")):
                    dead.append(f"{where} (no heading with that anchor)")
    return dead


def leaf_keys(obj, prefix: str) -> list[str]:
    """A config dataclass's keys as written in params.yaml: a field holding a dataclass is a
    subsection, any other field (a mapping such as blend.fixed_weights included) is one key."""
    keys = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if dataclasses.is_dataclass(value):
            keys += leaf_keys(value, f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def params_keys() -> set[str]:
    """Every key a params file may hold: the fields of each section's config class
    (tests/test_params.py holds params.yaml to exactly these)."""
    return {key for name in sections() for key in leaf_keys(section_class(name)(), f"{name}.")}


def documented_keys(page_text: str, known: set[str]) -> tuple[Counter, list[str]]:
    """How often each key is documented (a table row whose first cell is the key in backticks;
    `<model>.k` counts for every registered model with the key), and the rows that document no
    key."""
    counts: Counter = Counter()
    stray = []
    for line in prose_lines(page_text):
        match = re.match(r"^\|\s*`([^`]+)`\s*\|", line)
        if not match:
            continue
        row = match.group(1)
        if row.startswith(f"{MODEL}."):
            keys = [f"{m}{row[len(MODEL):]}" for m in REGISTRY if f"{m}{row[len(MODEL):]}" in known]
        else:
            keys = [row] if row in known else []
        if not keys:
            stray.append(row)
        counts.update(keys)
    return counts, stray


def undocumented_or_twice(page_text: str, known: set[str]) -> list[str]:
    counts, stray = documented_keys(page_text, known)
    problems = [f"{key}: not documented" for key in sorted(known) if counts[key] == 0]
    twice = [key for key in sorted(known) if counts[key] > 1]
    problems += [f"{key}: documented {counts[key]} times" for key in twice]
    return problems + [f"{row}: documented but no such key" for row in stray]


def test_no_dead_links():
    dead = dead_links(ROOT)
    assert dead == [], "\n".join(dead)


def test_every_params_key_documented_once():
    page = (ROOT / PARAMS_PAGE).read_text(encoding="utf-8")
    problems = undocumented_or_twice(page, params_keys())
    assert problems == [], "\n".join(problems)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference text to docs/"


def test_the_checks_fail_on_planted_faults(tmp_path):
    """A dead file link, a dead anchor, a key documented twice, a key not documented and a row
    naming no key are each found."""
    (tmp_path / "docs").mkdir()
    page_a = "# Page A\n\n## Same\n\n## Same\n\n```\n# not a heading\n```\n"
    (tmp_path / "docs" / "a.md").write_text(page_a)
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md#same-1) [ok](#title) `[code](nowhere.md)`\n# Title\n"
        "[file](docs/b.md) [anchor](docs/a.md#not-a-heading) [web](https://example.org/x)\n")
    assert dead_links(tmp_path) == [
        "README.md: docs/b.md (no such file)",
        "README.md: docs/a.md#not-a-heading (no heading with that anchor)"]
    known = {"lgbm.seed", "llm.swap_tta", "lgbm.swap_tta", "llm.lora_r"}
    rows = ["`lgbm.seed`", "`<model>.swap_tta`", "`llm.swap_tta`", "`llm.gone`"]
    page = "".join(f"| {row} | meaning |\n" for row in rows)
    assert undocumented_or_twice(page, known) == [
        "llm.lora_r: not documented",
        "llm.swap_tta: documented 2 times",
        "llm.gone: documented but no such key"]


def test_slug_follows_github():
    assert slug("Will it fit? `python -m ensemble.plan`") == "will-it-fit-python--m-ensembleplan"
    assert slug("How `select`'s candidates were chosen") == "how-selects-candidates-were-chosen"
    assert slug("Comparing runs: `dvc exp show`") == "comparing-runs-dvc-exp-show"


def readme_judge_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Judge API", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_judge_example_runs(finished, tmp_path, monkeypatch, capsys):
    """The README's Judge example, run as written in a folder holding a finished run and its
    params.yaml."""
    import shutil

    from ensemble.blend.run import run as run_blend

    src, _, _ = finished
    art = tmp_path / "artifacts"
    shutil.copytree(src, art)
    params = params_for(["lgbm"])
    run_blend(params, art, metrics_path=art / "head.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_judge_example(), "README.md (Judge API)", "exec"), {})
    verdict = yaml.safe_load(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(verdict) == {"winner_model_a", "winner_model_b", "winner_tie"}
    assert sum(verdict.values()) == pytest.approx(1.0)
