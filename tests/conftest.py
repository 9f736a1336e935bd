import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"real data not found at {SHARED}")
    return SHARED


def battle_frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Small parsed battle frame with a learnable length signal and repeated prompts."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        la, lb = rng.integers(1, 40, size=2)
        label = 0 if la > lb + 5 else 1 if lb > la + 5 else 2
        rows.append({"id": str(i), "prompt": [f"question {i % (n // 3)} about topic"],
                     "response_a": [" ".join(["word"] * la)], "response_b": [" ".join(["text"] * lb)],
                     "label": label})
    return pd.DataFrame(rows)


def raw_csv(frame: pd.DataFrame, path: Path, labels: bool = True) -> Path:
    """Write a parsed frame back in the Kaggle CSV layout."""
    import json

    out = pd.DataFrame({"id": frame["id"]})
    for col in ("prompt", "response_a", "response_b"):
        out[col] = [json.dumps(v) for v in frame[col]]
    if labels:
        for j, col in enumerate(("winner_model_a", "winner_model_b", "winner_tie")):
            out[col] = (frame["label"] == j).astype(int)
    out.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for tiny models, restored afterwards (see ensemble.training.intra_op_threads)."""
    from ensemble.nn.training import intra_op_threads

    with intra_op_threads(1):
        yield


# --- a tiny random Llama for the LLM tests (test_llm, test_inference) ----------------------------

CORPUS = ["the cat sat on a mat while quick brown foxes jump over lazy dogs",
          "question about topic word text please explain why hello world",
          "User prompt: Model A: Model B: answer alpha beta gamma END",
          "écrire un poème 日本語のテキスト Привет мир emoji 😀🔥👍🏽 مرحبا",
          "\n\nWhich response is better, A or B, or is it a tie?"]
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}")


def build_tiny_llm(folder: Path, special_tokens: bool = True, chat: bool = False) -> str:
    """Random 2-layer Llama + BPE tokenizer with no pad token and the library's 1e30
    model_max_length (load_tokenizer must clamp it to max_position_embeddings)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] if special_tokens else []
    tok = Tokenizer(models.BPE(unk_token="<unk>" if special_tokens else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    named = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"} if special_tokens else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    assert fast.pad_token is None
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> str:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


def finished_llm_run(root: Path, tiny_llm: str, frame: pd.DataFrame, n_train: int, n_folds: int) -> dict:
    """A finished LLM run under `root`: the tiny Llama copied to its own folder, LoRA on the top layer from
    cached frozen states, one device, the code digest pinned; prepared train/test files and folds as submit
    checks them. Returns art, base, config, train, test, folds."""
    import shutil

    from ensemble.core.data import save_battles
    from ensemble.core.folds import make_folds
    from ensemble.pipeline.oof import run_oof

    base, art = root / "base", root / "artifacts"
    shutil.copytree(tiny_llm, base)
    train = frame.iloc[:n_train].reset_index(drop=True)
    test = frame.iloc[n_train:].drop(columns="label").assign(id=lambda f: "t" + f["id"]).reset_index(drop=True)
    save_battles(art / "prepared" / "train.parquet", train)
    save_battles(art / "prepared" / "test.parquet", test)
    folds = make_folds(train, n_folds, seed=0)
    folds.to_parquet(art / "folds.parquet")
    config = tiny_config(str(base), quantization="none", lora_layers=1, devices=["cpu"], infer_max_tokens=256,
                         infer_max_rows=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-pinned")
        run_oof("llm", config, train, folds, art, test=test)
    return {"art": art, "base": base, "config": config, "train": train, "test": test, "folds": folds}


@pytest.fixture
def decoder_forwards(monkeypatch) -> list[tuple[bool, object, object]]:
    """Every forward of the tiny Llama's decoder (LlamaModel) while the test runs: (training mode, the
    use_cache it was given, the KV cache it returned)."""
    from transformers.models.llama.modeling_llama import LlamaModel

    calls, forward = [], LlamaModel.forward

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls.append((self.training, kwargs.get("use_cache"), out.past_key_values))
        return out

    monkeypatch.setattr(LlamaModel, "forward", spy)
    return calls


def checkpointing_config(base: str, quantization: str, checkpointing: bool, lora_layers: int = 0) -> dict:
    """A few training steps; lora_layers 0: every layer trains (each step runs the HF decoder), 1: the top
    layer trains from the cached states of the one below (forward_from)."""
    return tiny_config(base, quantization=quantization, lora_layers=lora_layers, calib_frac=0.0, swap_augment=False,
                       swap_tta=False, train={"max_steps": 3, "batch_size": 4, "lr": 5e-3, "seed": 0,
                                              "gradient_checkpointing": checkpointing})


def tiny_config(base: str, **overrides) -> dict:
    config = dict(base_model=base, quantization="4bit", num_layers=0, max_len=96, lora_r=4, lora_alpha=8,
                  lora_dropout=0.0, max_train_rows=0, infer_max_tokens=512, infer_max_rows=8, swap_augment=True,
                  swap_tta=True, calib_frac=0.0, train={"epochs": 1, "batch_size": 8, "lr": 5e-3, "seed": 0})
    config.update(overrides)
    return config


# --- a planted signal for the learning tests ----------------------------------------------------

def marker_frame(n: int, words: list[str], marker: str, seed: int = 0) -> pd.DataFrame:
    """Battles whose label only the tokens tell: the winner's response carries `marker`, a tie has
    it in both responses or in neither. Lengths are random, so nothing else predicts the label;
    battles 2i and 2i+1 share one prompt text exactly (prompt-grouped folds must keep them together:
    tests/test_folds.py checks that they do)."""
    rng = np.random.default_rng(seed)
    words = [w for w in words if w != marker]
    rows = []
    for i in range(n):
        label = int(rng.choice(3, p=[0.36, 0.36, 0.28]))
        a, b = (list(rng.choice(words, size=int(rng.integers(3, 9)))) for _ in range(2))
        with_marker = {0: [a], 1: [b], 2: [a, b] if rng.random() < 0.5 else []}[label]
        for text in with_marker:
            text.insert(int(rng.integers(0, len(text) + 1)), marker)
        drawn = " ".join(rng.choice(words, size=4, replace=True)) + f" {i // 2}"  # drawn every row: same stream
        prompt = drawn if i % 2 == 0 else rows[i - 1]["prompt"][0]  # the odd battle repeats its pair's prompt
        rows.append({"id": f"m{i}", "prompt": [prompt],
                     "response_a": [" ".join(a)], "response_b": [" ".join(b)], "label": label})
    return pd.DataFrame(rows)


def oof_log_loss(name: str, config: dict, frame: pd.DataFrame, artifacts: Path,
                 n_splits: int = 3) -> tuple[float, float]:
    """(OOF log loss, class-prior log loss) of `name` trained through run_oof on prompt-grouped folds."""
    from ensemble.core.folds import make_folds
    from ensemble.core.metrics import log_loss, prior_proba
    from ensemble.pipeline.oof import run_oof

    run_oof(name, config, frame, make_folds(frame, n_splits, seed=0), artifacts)
    oof = pd.read_parquet(artifacts / "oof" / f"{name}.parquet").set_index("id").loc[frame["id"]]
    labels = frame["label"].to_numpy()
    proba = oof[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    return log_loss(labels, proba), log_loss(labels, prior_proba(labels, len(labels)))


# ----------------------------------------------------------------------------- a tiny DebertaV2

WORDS = ("the cat sat on a mat while quick brown foxes jump over lazy dogs and we write code in python "
         "because answers should be helpful honest short or long please explain why hello world").split()
EXOTIC = ["écrire un poème sur la mer", "日本語のテキスト", "Привет мир", "emoji 😀🔥👍🏽 party", "مرحبا بالعالم"]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_deberta")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = [" ".join(WORDS[i:i + 7]) for i in range(len(WORDS))] + EXOTIC
    tok.train_from_iterator(corpus * 3, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = DebertaV2Config(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    DebertaV2Model(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)
