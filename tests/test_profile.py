"""Params profiles (real CPU run, GPU run) apply cleanly onto params.yaml, keep its comments, and
refuse keys or values params.yaml does not allow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ensemble.core.config import ConfigError
from ensemble.models import create
from ensemble.pipeline.profile import apply_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_profile_applies_and_validates(profile, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    changes = apply_profile(profile, ["data.train=../shared/data/pandalm_999.csv"], params)
    merged = yaml.safe_load(params.read_text())
    overlay = yaml.safe_load(profile.read_text())
    assert changes and merged["data"]["train"] == "../shared/data/pandalm_999.csv"
    for section in ("lgbm", "dual_tower", "llm"):
        create(section, merged[section])  # every value is still a valid param
    for key, value in overlay.get("llm", {}).items():
        if not isinstance(value, dict):
            assert merged["llm"][key] == value
    assert "# The one source of configuration" in params.read_text()  # comments kept


def test_bad_profile_keys_and_values_exit_2(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text()
    for sets, message in ((["llm.nope=1"], "profile key llm.nope is not in params.yaml"),
                          (["lgbm.n_estimators=lots"], "params lgbm.n_estimators: 'lots' (str) must be a whole number"),
                          (["data.train"], "expected key=value"),
                          (["llm="], "profile key llm: None would replace a section of keys"),
                          (["data.train.path=x"], "profile key data.train: {'path': 'x'} would replace"),
                          (["folds.n_splits=1"], "params folds.n_splits: 1 is not allowed"),
                          (["blend.method=average"], "params blend.method: 'average' is not allowed"),
                          (["demo.n_train=-5"], "params demo.n_train: -5 is not allowed")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            apply_profile(None, sets, params)
    assert params.read_text() == before  # nothing half-applied
    proc = subprocess.run([sys.executable, "-m", "ensemble.profile", "--params", str(params), "--set", "llm.max_len=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == ("error: params llm.max_len: 0 is not allowed; "
                                                            "expected a number >= 16")
