"""Progress that suits where it runs: bars in a terminal, a few plain lines in a log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ensemble.nn.training import TrainConfig, train_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]


def _run(monkeypatch, mode: str, evaluate=None) -> str:
    monkeypatch.setenv("ENSEMBLE_PROGRESS", mode)
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [{"x": torch.randn(4, 4), "y": torch.randint(0, 3, (4,))} for _ in range(40)]
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, warmup_ratio=0.0)
    train_loop(model, batches, lambda m, b: nn.functional.cross_entropy(m(b["x"]), b["y"]), cfg,
               torch.device("cpu"), evaluate=evaluate, desc="toy train")
    return mode


def test_log_mode_writes_one_line_per_epoch_and_no_redraws(monkeypatch, capfd):
    _run(monkeypatch, "log")
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) == 3, err  # 120 steps, 3 epochs: 3 lines
    assert lines[-1].startswith("toy train: step 120/120 (epoch 3.00), train loss ")
    _run(monkeypatch, "log", evaluate=lambda m: 1.0)
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all("held-out 1.0000" in line for line in lines)


def test_terminal_mode_draws_a_live_bar(monkeypatch, capfd):
    _run(monkeypatch, "bar")
    err = capfd.readouterr().err
    assert "\r" in err and "toy train" in err and "120/120" in err


def test_unknown_progress_mode_is_refused_up_front(tmp_path):
    env = {**os.environ, "ENSEMBLE_PROGRESS": "bars", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ensemble.profile"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: environment ENSEMBLE_PROGRESS='bars': expected bar, log or unset"
