"""bench/gpu_check.py (make gpu-check) run on the CPU with tiny models: every step a GPU run takes (params
from the smoke profile, demo data, the OOF stage in its own process, the plan beside it) works and reports
its figures, so the first GPU run is spent on the GPU, not on the script."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def test_gpu_check_runs_every_stage_and_prints_the_plan_beside_it(tiny_llm, tiny_backbone, tmp_path, capsys):
    out = tmp_path / "check"
    rc = gpu_check.main(["--device", "cpu", "--rows", "48,12", "--folds", "2", "--out", str(out),
                         "--set", f"dual_tower.backbone={tiny_backbone}", "--set", "dual_tower.max_len=64",
                         "--set", f"llm.base_model={tiny_llm}", "--set", "llm.max_len=96"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert [r["run"] for r in rows] == ["dual_tower fp32", "llm fp32"]
    for row in rows:
        assert row["seconds"] > 0 and row["plan_seconds"] > 0 and row["tokens_per_s"] > 0
        assert row["plan_peak_gib"] > 0
    for model in ("dual_tower", "llm"):  # the OOF stage really ran: its predictions are on disk
        assert any(out.glob(f"run*/artifacts/oof/{model}.parquet"))
    assert "(plan" in printed


def test_gpu_check_without_cuda_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "cuda_ready", lambda: False)
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        "gpu-check: skipped, no CUDA device here (torch.cuda.is_available() is False)"]
