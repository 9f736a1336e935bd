import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble import TARGETS
from ensemble.core.data import DataError, save_battles
from ensemble.report import intervals, load_inputs, slice_table, truncation_flags

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("lgbm", "llm")


def _battles(n: int = 90, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        la, lb = rng.integers(1, 60, size=2)
        turns = int(rng.integers(1, 4))
        label = 0 if la > lb + 8 else 1 if lb > la + 8 else 2
        rows.append({"id": f"b{i}", "prompt": [f"question {i} <b>&"] * turns,
                     "response_a": ["word " * la] * turns, "response_b": ["text " * lb] * turns, "label": label})
    return pd.DataFrame(rows)


def _proba(labels: np.ndarray, strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), 3))
    logits[np.arange(len(labels)), labels] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def art(tmp_path: Path) -> Path:
    art = tmp_path / "artifacts"
    train = _battles()
    save_battles(art / "prepared" / "train.parquet", train)
    labels = train["label"].to_numpy()
    probas = {}
    for k, name in enumerate(MODELS):
        probas[name] = _proba(labels, 1.0 + k, seed=k)
        frame = pd.DataFrame(probas[name], columns=list(TARGETS)).assign(id=train["id"], fold=np.arange(len(train)) % 3)
        (art / "oof").mkdir(parents=True, exist_ok=True)
        frame[["id", "fold", *TARGETS]].iloc[::-1].to_parquet(art / "oof" / f"{name}.parquet", index=False)  # any order
    blended = 0.4 * probas["lgbm"] + 0.6 * probas["llm"]
    pd.DataFrame(blended, columns=list(TARGETS)).assign(id=train["id"], label=labels)[["id", "label", *TARGETS]] \
        .to_parquet(art / "blend_oof.parquet", index=False)
    (art / "blend.json").write_text(json.dumps({"method": "weights", "models": list(MODELS), "config": {},
                                                "classes": [0, 1, 2], "rows": len(train),
                                                "state": {"weights": {"lgbm": 0.4, "llm": 0.6}, "temperature": 1.0}}))
    (art / "metrics.json").write_text(json.dumps({
        "blend": {"log_loss": 0.9, "accuracy": 0.5, "ci": {"log_loss": [0.81, 0.99]},
                  "insample": {"log_loss": 0.85, "accuracy": 0.52},
                  "by_method": {"weights": {"log_loss": 0.9, "accuracy": 0.5},
                                "stack": {"log_loss": 0.95, "accuracy": 0.4}}},
        "blender": {"method": "weights", "summary": {"temperature": 1.0}, "weights": {"lgbm": 0.4, "llm": 0.6}}}))
    (art / "models" / "llm").mkdir(parents=True)
    (art / "models" / "llm" / "input.json").write_text(json.dumps(
        {"max_len": 64, "battles": len(train), "response_a": {"kept_share": 0.9, "battles_cut": 0.3},
         "battles_cut_any": 0.4}))
    return art


def _run(art: Path, out: Path, **override) -> subprocess.CompletedProcess:
    paths = {"--train": art / "prepared" / "train.parquet", "--oof-dir": art / "oof",
             "--blend-oof": art / "blend_oof.parquet", "--blend": art / "blend.json",
             "--metrics": art / "metrics.json", "--models-dir": art / "models",
             "--plots-dir": out / "plots", "--html": out / "report.html", **override}
    cmd = [sys.executable, str(ROOT / "stages" / "report.py")] + [str(x) for kv in paths.items() for x in kv]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=art.parent)


def test_report_is_self_contained_with_every_section(art, tmp_path):
    proc = _run(art, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    # nothing fetched from the network: no external src/href, no scripts at all
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert page.count('src="data:image/png;base64,') >= 2 + len(MODELS) + 1  # overview, slices, each section
    for section in ("summary", "slices", "blend", *MODELS, "inputs"):
        assert f'id="{section}"' in page
    for text in ("Log loss by slice", "length A / length B", "turns", "true outcome", "truncated for llm (proxy)",
                 "[0.8100, 0.9900]", "0.400", "0.600",  # CI from metrics.json, weights
                 "blend weights, cross-fitted", "blend stack, cross-fitted", "in-sample (scored on the rows it was"):
        assert text in page, text
    assert "question 0 <b>" not in page  # texts are never pasted raw
    # dvc plots files: the cross-fitted blend's and each model's reliability in long form, the diagonal, the
    # confusion pairs
    plots = tmp_path / "out" / "plots"
    reliability = pd.read_csv(plots / "reliability.csv")
    assert set(reliability["model"]) == {"blend (weights, cross-fitted)", *MODELS, "perfect calibration"}
    assert (set(reliability["outcome"]) == {"model_a", "model_b", "tie"}
            and len(pd.read_csv(plots / "confusion.csv")) == 90)
    # same inputs, same bytes
    first = (tmp_path / "out" / "report.html").read_bytes()
    assert _run(art, tmp_path / "out").returncode == 0
    assert (tmp_path / "out" / "report.html").read_bytes() == first


def test_slice_table_matches_the_overall_log_loss(art):
    data = load_inputs(art / "prepared" / "train.parquet", art / "oof", art / "blend_oof.parquet",
                       art / "blend.json", art / "metrics.json", art / "models")
    table = slice_table(data)
    from ensemble.core.metrics import log_loss

    overall = table[table["group"] == "all"].iloc[0]
    for name, proba in data.probas.items():
        assert overall[name] == pytest.approx(log_loss(data.labels, proba))
    for group, part in table[table["group"] != "all"].groupby("group", sort=False):  # each group covers every battle
        if group != "true outcome":
            assert part["n"].sum() == len(data.labels)
            assert (part["n"] * part["lgbm"]).sum() / len(data.labels) == pytest.approx(overall["lgbm"])
    flags, how = truncation_flags(data)["llm"]
    assert flags.mean() == pytest.approx(0.4, abs=0.05) and "input.json" in how


def test_intervals_accept_several_spellings():
    assert intervals({"ci": {"log_loss": [0.1, 0.2]}}) == {"log_loss": (0.1, 0.2)}
    assert intervals({"ci": {"accuracy": {"low": 0.5, "high": 0.6}}}) == {"accuracy": (0.5, 0.6)}
    assert intervals({"log_loss_ci": [0.3, 0.4], "log_loss": 0.35}) == {"log_loss": (0.3, 0.4)}
    assert intervals({"precision": 1.0}) == {}


@pytest.mark.parametrize("break_it, message", [
    (lambda art: (art / "oof" / "llm.parquet").unlink(), "no OOF file for model 'llm'"),
    (lambda art: pd.read_parquet(art / "oof" / "lgbm.parquet").iloc[5:]
        .to_parquet(art / "oof" / "lgbm.parquet", index=False), "ids do not match"),
    (lambda art: pd.read_parquet(art / "blend_oof.parquet").assign(id=lambda f: "x" + f["id"])
        .to_parquet(art / "blend_oof.parquet", index=False), "ids do not match"),
    (lambda art: (art / "blend.json").write_text("{not json"), "not valid JSON"),
    (lambda art: pd.read_parquet(art / "prepared" / "train.parquet").drop(columns="label")
        .to_parquet(art / "prepared" / "train.parquet", index=False), "no label column"),
])
def test_bad_input_is_one_line_and_exit_2(art, tmp_path, break_it, message, capsys):
    """The stage's main through the CLI wrapper, in this process (test_report_is_self_contained... runs the
    script itself); the first case also as a subprocess, for the real exit code."""
    import importlib.util

    from ensemble.core.cli import fail_cleanly

    break_it(art)
    spec = importlib.util.spec_from_file_location("report_stage", ROOT / "stages" / "report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    out = tmp_path / "out"
    argv = [str(x) for kv in {"--train": art / "prepared" / "train.parquet", "--oof-dir": art / "oof",
                              "--blend-oof": art / "blend_oof.parquet", "--blend": art / "blend.json",
                              "--metrics": art / "metrics.json", "--models-dir": art / "models",
                              "--plots-dir": out / "plots", "--html": out / "report.html"}.items() for x in kv]
    assert fail_cleanly(lambda: stage.main(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (out / "report.html").exists()
    if "llm" in message:
        proc = _run(art, tmp_path / "cli")
        assert proc.returncode == 2 and proc.stderr.strip() == lines[0], proc.stderr


def test_load_inputs_raises_data_error(art):
    (art / "prepared" / "train.parquet").unlink()
    with pytest.raises(DataError, match="train.parquet: file not found"):
        load_inputs(art / "prepared" / "train.parquet", art / "oof", art / "blend_oof.parquet",
                    art / "blend.json", art / "metrics.json", art / "models")


def test_difference_intervals_are_labelled_on_their_rows():
    """The intervals the blend stage writes are of differences: each model vs the prior, the cross-fitted blend
    vs the best model (moved from the in-sample blend entry onto the cross-fitted row)."""
    from ensemble.report.html import _ci

    assert _ci({"ci": {"diff_vs_prior": (-0.2, -0.1)}}, "lgbm") == "vs prior [-0.2000, -0.1000]"
    assert _ci({"ci": {"diff_vs_best": (-0.02, 0.002)}}, "lgbm") == "vs lgbm [-0.0200, +0.0020]"
    assert _ci({"ci": {"log_loss": (0.81, 0.99)}}, "lgbm") == "[0.8100, 0.9900]"

