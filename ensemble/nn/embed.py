"""Sentence embeddings from a pretrained encoder (mean-pooled, L2-normalised), for models that want a few
semantic numbers beside their own features (LightGBM's prompt/answer similarities). Each distinct text
is encoded once per run: the vectors live in the run's cache (ensemble.core.cache), keyed by the
encoder's weights and the token budget.
"""

from __future__ import annotations

import numpy as np

from ensemble.core import progress
from ensemble.core.cache import RunCache


class SentenceEncoder:
    """texts -> (n, d) unit vectors with a Hugging Face encoder (all-MiniLM-L6-v2 by default)."""

    def __init__(self, backbone: str, max_len: int, cache: RunCache, max_tokens: int = 8192):
        self.backbone, self.max_len, self.cache, self.max_tokens = backbone, int(max_len), cache, int(max_tokens)
        self._model = self._tokenizer = None

    def _load(self):
        import torch
        from transformers import AutoModel

        from ensemble.nn.hf import load_pretrained, load_tokenizer

        if self._model is None:
            self._tokenizer = load_tokenizer(self.backbone, self.max_len)
            self._model = load_pretrained(AutoModel, self.backbone, "model", dtype=torch.float32).eval()
        return self._model, self._tokenizer

    def store(self, identity: str) -> dict:
        return self.cache.store("embed.vectors", (identity, self.max_len))

    def encode(self, texts: list[str], identity: str) -> np.ndarray:
        import torch

        from ensemble.nn.batching import pad
        from ensemble.nn.hf import token_budget_batches

        store = self.store(identity)
        todo = [t for t in dict.fromkeys(texts) if t not in store]
        if todo:
            model, tok = self._load()
            ids = tok([t[: 8 * self.max_len] for t in todo], truncation=True, max_length=self.max_len,
                      return_attention_mask=False, verbose=False)["input_ids"]
            timer = progress.Timer()
            with torch.inference_mode():
                for batch in token_budget_batches([len(x) for x in ids], self.max_tokens, 256):
                    x, mask = pad([ids[i] for i in batch], tok.pad_token_id)
                    hidden = model(input_ids=x, attention_mask=mask).last_hidden_state
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    vec = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)
                    for i, v in zip(batch, vec.numpy()):
                        store[todo[i]] = v
            progress.log_quiet(f"embeddings: {len(todo)} new texts in {timer.seconds:.1f} s")
        return np.stack([store[t] for t in texts]) if texts else np.zeros((0, 0))
