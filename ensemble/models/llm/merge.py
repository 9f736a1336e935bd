"""K fold models -> one, so that submit runs the LLM once instead of K times (`llm.merge_folds`; LMSYS 2024
1st place averaged its five fold LoRAs into one adapter).

What is exact and what is not:
- the LoRA deltas are averaged exactly. Fold k adds (alpha / r) * B_k @ A_k to a weight; stacking the A_k
  (rows) and the B_k / K (columns) gives one adapter of rank K * r whose delta, with alpha K * alpha (the same
  alpha / r scaling), is the mean of the K deltas (peft's `cat` combination; a plain average of A and of B
  would not be: mean(B) @ mean(A) != mean(B @ A));
- the score heads are linear maps of the pooled states: averaged;
- the calibrations (temperature, shrinkage toward the prior, the prior): averaged.
The fold average of probabilities is taken after the network's nonlinearities and the merged model averages
before them, so the two predictions differ; `bench/bench_submit.py` and the note measure by how much.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ensemble.core.calibration import Calibration
from ensemble.core.errors import ModelLoadError


def merge_folds(models: list) -> object:
    """One LLMModel whose adapter is the exact mean of the folds' LoRA deltas and whose head and calibration
    are the folds' means. Folds trained with other LoRA settings (rank, alpha, targets, layers) or on other
    base weights are refused with one line."""
    if not models:
        raise ModelLoadError("merge_folds: no fold models to merge")
    first, k = models[0], len(models)
    keys = sorted(first.adapter_state)
    for i, m in enumerate(models[1:], start=1):
        if sorted(m.adapter_state) != keys:
            extra = sorted(set(m.adapter_state) ^ set(keys))[:3]
            raise ModelLoadError(f"merge_folds: fold model {i} adapts other modules than fold model 0 (e.g. "
                                 f"{extra}); all folds must share llm.lora_target_modules and num_layers/lora_layers")
        shapes = [(key, tuple(m.adapter_state[key].shape), tuple(first.adapter_state[key].shape)) for key in keys]
        bad = [s for s in shapes if s[1] != s[2]]
        if bad:
            raise ModelLoadError(f"merge_folds: fold model {i}'s {bad[0][0]} has shape {bad[0][1]}, fold model 0's "
                                 f"{bad[0][2]}; all folds must share llm.lora_r and the base model")
        same = ("lora_r", "lora_alpha", "base_model", "num_layers", "lora_layers", "pooling", "quantization")
        diff = [f for f in same if getattr(m.config, f) != getattr(first.config, f)]
        if diff or m.base_digest != first.base_digest:
            what = diff[0] if diff else "the base weights' digest"
            raise ModelLoadError(f"merge_folds: fold model {i} differs from fold model 0 in {what}; merge only the "
                                 f"folds of one run")
    state = {}
    for key in keys:
        parts = [m.adapter_state[key].float() for m in models]
        if ".lora_A." in key:  # (r, in) each -> (K r, in)
            state[key] = torch.cat(parts, dim=0)
        elif ".lora_B." in key:  # (out, r) each -> (out, K r), scaled by 1/K
            state[key] = torch.cat(parts, dim=1) / k
        else:  # the score head (and any other trained tensor): the mean
            state[key] = torch.stack(parts).mean(dim=0)
        state[key] = state[key].to(first.adapter_state[key].dtype)
    config = dataclasses.replace(first.config, lora_r=first.config.lora_r * k, lora_alpha=first.config.lora_alpha * k,
                                 merge_folds=False)
    merged = type(first)(config, cache=first.cache)
    merged.tokenizer, merged.base_digest, merged.adapter_state = first.tokenizer, first.base_digest, state
    cals = [m.calibration for m in models]
    merged.calibration = Calibration(temperature=float(np.mean([c.temperature for c in cals])),
                                     shrink=float(np.mean([c.shrink for c in cals])),
                                     prior=tuple(float(v) for v in np.mean([c.prior for c in cals], axis=0)),
                                     rows=int(sum(c.rows for c in cals)))
    merged.classes_ = sorted(set().union(*(m.classes_ or [] for m in models)))
    merged.n_train_ = int(round(np.mean([m.n_train_ for m in models])))
    merged.fit_info = {"merged_folds": k}
    return merged
