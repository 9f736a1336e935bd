"""python -m ensemble.plan: the estimates scale as their formulas say, and bad plans and inputs end in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ensemble import plan
from ensemble.core.cli import fail_cleanly
from ensemble.plan.hardware import GPUS, HARDWARE_NAMES, bf16_rate, cpu_hardware, flops_per_cycle

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
GPU_PROFILE = ROOT / "profiles" / "gpu.yaml"

#: a small Llama-shaped backbone, written out so the unit tests need no transformers
TOY = plan.Backbone(name="toy", source="test", model_type="llama", layers=4, hidden=64, intermediate=256, heads=4,
                    kv_heads=4, vocab=1000, attn_width=64, layer_params=4 * 64 * 64 + 3 * 64 * 256,
                    layer_linear=4 * 64 * 64 + 3 * 64 * 256, lora_per_r=4 * 128 + 3 * 320,
                    largest_linear=64 * 256, other_params=1000 * 64, gated=True, eager=False)


def configs(*sets: str) -> dict:
    """params.yaml's sections with the toy's layers (the demo keeps 12) and no row caps, plus `sets`."""
    base = ["llm.num_layers=0", "llm.lora_layers=1", "llm.max_train_rows=0"]
    return plan.read_plan_params(PARAMS, None, [*base, *sets])


def lengths(n: float) -> plan.Lengths:
    return plan.Lengths(n, n * n, "test")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = fail_cleanly(lambda: plan.main(list(argv)))
    out = capsys.readouterr()
    return rc, out.out, out.err


def flops(stage: plan.Stage, where: str) -> float:
    return sum(p.flops for p in stage.passes if p.where == where)


@pytest.mark.parametrize("model", ["llm", "dual_tower"])
def test_doubling_rows_doubles_flops_and_time(model):
    cfg = configs("dual_tower.freeze_layers=0")[model]
    build = plan.plan_llm if model == "llm" else plan.plan_dual_tower
    hw = GPUS["a100-80g"]
    # under 64 x 5 training rows: the position check (64 held-out battles a fold at most) scales too
    small = build(cfg, TOY, plan.Shape(150, 40, 5), lengths(100), lengths(100), hw, hw)
    big = build(cfg, TOY, plan.Shape(300, 80, 5), lengths(100), lengths(100), hw, hw)
    plan.stage_seconds(small, hw, hw)
    plan.stage_seconds(big, hw, hw)
    for where in ("train", "infer"):
        assert flops(small, where) > 0
        assert flops(big, where) == pytest.approx(2 * flops(small, where))
        assert big.seconds[where] == pytest.approx(2 * small.seconds[where])


def test_doubling_rows_doubles_lgbm_time():
    cfg = configs()["lgbm"]
    hw = GPUS["a100-80g"]
    small = plan.plan_lgbm(cfg, plan.Shape(5000, 1000, 5), hw, hw)
    big = plan.plan_lgbm(cfg, plan.Shape(10000, 2000, 5), hw, hw)
    assert big.seconds["train"] == pytest.approx(2 * small.seconds["train"])


def test_full_fine_tuning_costs_six_n_a_token_and_lora_four():
    hw = GPUS["h100-80g"]
    shape, tokens = plan.Shape(1000, 0, 5), lengths(1.0)  # one-token sequences: the attention term is ~0
    lora = plan.plan_llm(configs("llm.num_layers=0", "llm.lora_layers=0", "llm.max_train_rows=0")["llm"], TOY,
                         shape, tokens, tokens, hw, hw)
    full = plan.plan_dual_tower(configs("dual_tower.freeze_layers=0", "dual_tower.swap_augment=false")["dual_tower"],
                                TOY, shape, tokens, tokens, hw, hw)
    per_token = TOY.layers * TOY.layer_params
    lora_pass = next(p for p in lora.passes if p.what.startswith("LoRA"))
    full_pass = next(p for p in full.passes if p.what.startswith("fine-tune"))
    assert lora_pass.flops / lora_pass.tokens == pytest.approx(4 * per_token, rel=1e-3)
    assert full_pass.flops / full_pass.tokens == pytest.approx(6 * per_token, rel=1e-3)


def test_four_bit_weights_are_smaller_than_bf16():
    hw = GPUS["a100-80g"]
    shape, tokens = plan.Shape(1000, 400, 5), lengths(100)
    weights = {}
    for quant in ("4bit", "8bit", "none"):
        st = plan.plan_llm(configs(f"llm.quantization={quant}")["llm"], TOY, shape, tokens, tokens, hw, hw)
        weights[quant] = next(v for k, v in st.memory["infer"].items() if k.startswith("weights"))
    assert weights["4bit"] < weights["8bit"] < weights["none"]
    # bf16: 2 bytes for every parameter
    assert weights["none"] == pytest.approx((TOY.other_params + TOY.layers * TOY.layer_params) * 2 / plan.GIB)


def test_gradient_checkpointing_lowers_activation_memory():
    hw = GPUS["a100-80g"]
    shape, tokens = plan.Shape(1000, 400, 5), lengths(100)
    act = {}
    for ckpt in ("true", "false"):
        st = plan.plan_llm(configs("llm.lora_layers=0", f"llm.train.gradient_checkpointing={ckpt}")["llm"], TOY,
                           shape, tokens, tokens, hw, hw)
        act[ckpt] = next(v for k, v in st.memory["train"].items() if k.startswith("activations"))
    assert 0 < act["true"] < act["false"]


def test_unknown_hardware_exits_2_listing_the_known(capsys):
    rc, out, err = run(capsys, "--hardware", "tpu-v5", "--params", str(PARAMS))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    assert "tpu-v5" in err
    assert all(name in err for name in HARDWARE_NAMES)


def test_params_error_is_one_config_error_line(capsys):
    rc, out, err = run(capsys, "--params", str(PARAMS), "--set", "llm.max_len=long", "--rows", "100,10")
    assert rc == 2
    assert err.strip().splitlines() == [err.strip()]
    assert "llm.max_len" in err


def test_a_stage_that_cannot_fit_exits_2_naming_it_and_both_figures(capsys, tmp_path):
    rc, out, err = run(capsys, "--params", str(PARAMS), "--profile", str(GPU_PROFILE), "--set",
                       "llm.quantization=none", "--hardware", "h100-80g", "--infer-hardware", "kaggle-2xt4",
                       "--rows", "57477,25000", "--artifacts", str(tmp_path))
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: model@llm needs ")
    needs = float(line.split("needs ")[1].split(" GiB")[0])
    assert needs > GPUS["kaggle-2xt4"].memory_gib
    assert f"has {GPUS['kaggle-2xt4'].memory_gib:.1f} GiB (T4 16 GB)" in line
    # the same profile in 4-bit fits
    rc, out, err = run(capsys, "--params", str(PARAMS), "--profile", str(GPU_PROFILE), "--hardware", "h100-80g",
                       "--infer-hardware", "kaggle-2xt4", "--rows", "57477,25000", "--artifacts", str(tmp_path))
    assert rc == 0, err


def test_hours_warning(capsys, tmp_path):
    argv = ["--params", str(PARAMS), "--hardware", "a100-80g", "--rows", "2000,500", "--tokens", "200",
            "--artifacts", str(tmp_path)]
    rc, out, err = run(capsys, *argv, "--hours", "1000")
    assert rc == 0
    assert "warning" not in err
    rc, out, err = run(capsys, *argv, "--hours", "0.0001")
    assert rc == 0
    assert "warning: the training part takes" in err
    assert "past --hours 0.0001" in err


def test_no_prepared_data_and_no_rows_is_one_line(capsys, tmp_path):
    rc, out, err = run(capsys, "--params", str(PARAMS), "--artifacts", str(tmp_path))
    assert rc == 2
    assert "--rows" in err


def test_built_in_backbones_count_their_published_sizes():
    bb = plan.describe_backbone("meta-llama/Meta-Llama-3-8B", ROOT / "no-such-root")
    total = bb.other_params + bb.layers * bb.layer_params
    assert total == pytest.approx(7.50e9, rel=0.01)  # 8.03 B with the 0.53 B LM head AutoModel leaves out
    assert not bb.eager
    assert plan.describe_backbone("microsoft/deberta-v3-large", ROOT / "no-such-root").eager


def test_cpu_peak_from_flags():
    assert flops_per_cycle("AuthenticAMD", {"avx512f", "fma", "avx2"}, 25)[0] == 32
    assert flops_per_cycle("GenuineIntel", {"avx512f", "fma", "avx2"}, 6)[0] == 64
    assert flops_per_cycle("GenuineIntel", {"sse2"}, 6)[0] == 8
    hw = cpu_hardware()
    assert hw.peak_tflops > 0
    assert dataclasses.replace(hw, mfu=0.5).mfu == 0.5
    assert bf16_rate({"avx512f", "avx512_bf16"}) == 2.0
    assert bf16_rate({"avx512f"}) == 1.0


def test_the_4bit_llm_is_planned_at_a_bf16_cpus_bf16_peak():
    """On a CPU with bf16 dot products the 4-bit llm computes in bf16 (backbone.compute_dtype): twice the
    fp32 peak; an fp32 llm and the dual tower stay at the fp32 peak."""
    fp32_only = dataclasses.replace(cpu_hardware(), cpu_bf16_tflops=0.0)
    with_bf16 = dataclasses.replace(fp32_only, cpu_bf16_tflops=2 * fp32_only.peak_tflops)
    shape = plan.Shape(1000, 200, 5)

    def seconds(hw, *sets: str) -> float:
        st = plan.plan_llm(configs(*sets)["llm"], TOY, shape, lengths(200), lengths(200), hw, hw)
        plan.stage_seconds(st, hw, hw)
        return st.seconds["train"]

    assert seconds(with_bf16) == pytest.approx(seconds(fp32_only) / 2)
    assert seconds(with_bf16, "llm.quantization=none") == pytest.approx(seconds(fp32_only, "llm.quantization=none"))


def test_lengths_without_a_tokenizer_are_chars_over_4_and_say_so(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"prompt": [["x" * 400]], "response_a": [["y" * 800]], "response_b": [["z" * 4000]]})
    cfg = configs("dual_tower.backbone=microsoft/deberta-v3-large", "dual_tower.max_len=512")["dual_tower"]
    got = plan.tower_lengths(frame, cfg, tmp_path)
    assert "chars/4" in got.how
    assert got.mean == pytest.approx(((400 + 800) / 4 + 3 + 512) / 2)  # tower B is cut at max_len


def test_a_fold_budget_plans_the_folds_it_trains_and_the_refit():
    """`llm.folds: [0]` plans one fine-tune of the five; `refit_full` adds one on every row, and the
    submission then predicts with that one model."""
    hw, shape = cpu_hardware(), plan.Shape(1000, 200, 5)

    def passes(*sets: str) -> dict[str, float]:
        st = plan.plan_llm(configs(*sets)["llm"], TOY, shape, lengths(100), lengths(100), hw, hw)
        return {p.what: p.sequences for p in st.passes}

    every, one = passes(), passes("llm.folds=[0]")
    tune = next(w for w in every if w.startswith("LoRA fine-tune"))
    tune_one = next(w for w in one if w.startswith("LoRA fine-tune"))
    assert one[tune_one] == pytest.approx(every[tune] / 5)
    refit = passes("llm.folds=[0]", "llm.refit_full=true")
    assert any(w.startswith("refit on every row") for w in refit)
    assert not any(w.startswith("refit on every row") for w in one)
    assert [s for w, s in refit.items() if w.startswith("submit: test rows")] == [200]
    assert [s for w, s in every.items() if w.startswith("submit: test rows")] == [5 * 200]
