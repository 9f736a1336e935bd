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
    """One intra-op thread for tiny models: on a shared 2-core box, two OpenMP threads
    spin-wait on each other for seconds per step; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
