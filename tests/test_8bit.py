"""8-bit (bitsandbytes LLM.int8 base + LoRA) trains, saves and loads on CPU; where bitsandbytes cannot run
8-bit on the device the LLM stops up front with one clear error (ensemble.llm_backbone.check_quantization)."""

import numpy as np
import pytest
import torch
from conftest import battle_frame, checkpointing_config, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_8bit_checkpointing_and_no_kv_cache(tiny_llm, decoder_forwards):
    """gradient_checkpointing: true holds for 8-bit too, and no decoder forward builds a KV cache
    (tests/test_llm.py checks none and 4bit)."""
    from ensemble.models.llm.model import LLMModel

    model = LLMModel(checkpointing_config(tiny_llm, "8bit", True)).fit(battle_frame(24, 0))
    model.predict_proba(battle_frame(6, 1))
    assert {training for training, _, _ in decoder_forwards} == {True, False}
    assert all(use_cache is False and cache is None for _, use_cache, cache in decoder_forwards)
    assert model._replicas.get(torch.device("cpu")).base.is_activation_checkpointing


def test_8bit_training_step_save_and_load_on_cpu(tiny_llm, tmp_path):
    import bitsandbytes as bnb

    from ensemble.models.llm.model import LLMModel

    config = tiny_config(tiny_llm, quantization="8bit", lora_layers=0, calib_frac=0.0, swap_augment=False,
                         swap_tta=False, train={"max_steps": 2, "batch_size": 4, "lr": 5e-3, "seed": 0})
    model = LLMModel(config).fit(battle_frame(24, 0))
    assert model.fit_info["steps"] == 2
    net = model._replicas.get(torch.device("cpu"))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in net.modules())  # the base really is int8
    lora_b = [v for k, v in model.adapter_state.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: the steps moved it
    frame = battle_frame(10, 1)
    before = model.predict_proba(frame)
    model.save(tmp_path / "fold")
    after = LLMModel.load(tmp_path / "fold").predict_proba(frame)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


def test_8bit_that_bitsandbytes_cannot_run_is_one_clear_error_up_front(monkeypatch):
    import bitsandbytes as bnb

    from ensemble.models.llm.backbone import check_quantization
    from ensemble.nn.hf import ModelLoadError

    def refuse(*args, **kwargs):
        raise NotImplementedError("int8 is not supported on this device")

    monkeypatch.setattr(bnb.functional, "int8_vectorwise_quant", refuse)
    with pytest.raises(ModelLoadError, match=r"cannot run 8bit on cpu .*quantization: none"):
        check_quantization("8bit", torch.device("cpu"))
