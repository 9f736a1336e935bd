"""Params are checked when they load, before any data, weights or training: a wrong key, type,
choice or range exits 2 with one line naming the key, the value and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ensemble.core.config import ConfigError, from_dict
from ensemble.models import create
from ensemble.models.lgbm.model import LGBMConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("model, section, match", [
    ("llm", {"train": {"scheduler": "linaer"}},
     r"llm\.train\.scheduler: 'linaer' is not allowed; expected one of linear, cosine"),
    ("dual_tower", {"train": {"precision": "fp8"}},
     r"dual_tower\.train\.precision: 'fp8' is not allowed; expected one of auto"),
    ("llm", {"swap_tta": "false"}, r"llm\.swap_tta: 'false' \(str\) must be true or false"),
    ("lgbm", {"n_estimators": "many"}, r"lgbm\.n_estimators: 'many' \(str\) must be a whole number"),
    ("lgbm", {"learning_rate": 0}, r"lgbm\.learning_rate: 0.0 is not allowed; expected a number > 0"),
    ("lgbm", {"vectorizer": {"ngram_max": 0}}, r"lgbm\.vectorizer\.ngram_max: 0 is not allowed"),
    ("lgbm", {"vectorizer": 3}, r"lgbm\.vectorizer: 3 must be a mapping"),
    ("dual_tower", {"dropout": 1.0}, r"dual_tower\.dropout: 1.0 is not allowed; expected a number in \[0, 1\)"),
    ("dual_tower", {"train": {"batch_size": 0}}, r"dual_tower\.train\.batch_size: 0 is not allowed"),
    ("llm", {"train": {"epochs": -1}}, r"llm\.train\.epochs: -1.0 is not allowed"),
    ("llm", {"lora_r": 0}, r"llm\.lora_r: 0 is not allowed"),
    ("nonsense", {}, r"unknown model 'nonsense'; known: lgbm, dual_tower, llm"),
    ("lgbm", {"learning_rate": float("nan")}, r"lgbm\.learning_rate: nan is not allowed; expected a number > 0"),
    ("lgbm", {"early_stopping_folds": 1},
     r"lgbm\.early_stopping_folds: 1 is not allowed; expected one of auto, 0 or a number >= 2"),
    ("llm", {"train": {"lr": "3e-5x"}}, r"llm\.train\.lr: '3e-5x' \(str\) must be a number"),
])
def test_bad_params_are_refused_at_construction(model, section, match):
    with pytest.raises(ConfigError, match=match):
        create(model, section)


def test_good_values_pass_and_ints_become_floats():
    cfg = from_dict(LGBMConfig, {"learning_rate": 1, "vectorizer": {"ngram_max": 3}}, "lgbm")
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float) and cfg.vectorizer.ngram_max == 3


def test_yaml_1_1_exponent_floats_and_scalar_probe_c_are_accepted():
    """PyYAML reads `lr: 3e-5` (no dot) as a string, DVC's ruamel as a float: both mean 3e-5 here."""
    params = yaml.safe_load("lr: 3e-5\nweight_decay: 1E-2\n")
    assert params["lr"] == "3e-5"
    model = create("llm", {"train": params, "probe_c": 0.001})
    assert model.config.train.lr == 3e-5 and model.config.train.weight_decay == 0.01
    assert model.config.probe_c == 0.001  # the config holds what the user wrote; as_list reads it as [0.001]


def test_stage_exits_2_on_bad_params_before_reading_anything(tmp_path):
    """The stage refuses before loading data (tmp_path has none) and, under DVC, says how to get the
    last good outputs back."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["lgbm"]["n_estimators"] = "many"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_STAGE": "lgbm", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "oof.py"), "lgbm"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "error: params lgbm.n_estimators: 'many' (str) must be a whole number"
    assert "dvc checkout lgbm" in lines[1] and len(lines) == 2


@pytest.mark.parametrize("name", ["lgbm", "dual_tower", "llm"])
def test_one_fit_guard_for_every_model(name, tmp_path):
    from conftest import battle_frame
    from sklearn.exceptions import NotFittedError

    model = create(name)
    with pytest.raises(NotFittedError, match=f"^{name}: predict_proba before fit or load$"):
        model.predict_proba(battle_frame(3))
    if name != "lgbm":
        with pytest.raises(NotFittedError, match="input_report before fit or load"):
            model.input_report(battle_frame(3))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != "fixed_weights":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_params_yaml_lists_every_key_with_the_code_defaults():
    """One set of defaults: params.yaml (what DVC tracks and users edit) holds every key of every
    section, with exactly the value the config dataclass defaults to (what library users get)."""
    from ensemble.core.config import to_dict
    from ensemble.pipeline.sections import section_class, sections

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    classes = {name: section_class(name) for name in sections()}
    assert set(params) == set(classes)
    for name, cls in classes.items():
        code = _flat(to_dict(cls()))
        listed = _flat(to_dict(from_dict(cls, params[name], name)))
        assert set(_flat(params[name])) == set(code), (
            f"{name}: params.yaml lacks {set(code) - set(_flat(params[name]))}")
        assert listed == code, {k: (listed[k], code[k]) for k in code if listed[k] != code[k]}
