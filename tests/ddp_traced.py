"""`python tests/ddp_traced.py <model> ...` = `python stages/oof.py <model> ...` with a trace for the DDP tests:
each process appends to $DDP_TRACE/rank<r>.jsonl, per training loop, the digest of every batch it trained
on and of its trainable weights at the end, and to $DDP_TRACE/writes.tsv every atomic write with its
rank. The library has no such hook: this wraps its functions from outside, before the stage runs."""

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = Path(os.environ["DDP_TRACE"])
RANK = os.environ.get("RANK", "0")


def batch_digest(batch) -> str:
    import torch

    h = hashlib.sha256()
    for key, value in sorted(batch.items()):
        h.update(str(key).encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def state_digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def traced_loop(original):
    def train_loop(model, loader, loss_fn, cfg, device, **kwargs):
        batches = []

        def traced_loss(m, batch):
            batches.append(batch_digest(batch))
            return loss_fn(m, batch)

        result = original(model, loader, traced_loss, cfg, device, **kwargs)
        TRACE.mkdir(parents=True, exist_ok=True)
        record = {"rank": int(RANK), "world_size": int(os.environ.get("WORLD_SIZE", "1")), "batches": batches,
                  "weights": state_digest(model)}
        with open(TRACE / f"rank{RANK}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        return result

    return train_loop


def traced_writes(original):
    def atomic_path(path):
        TRACE.mkdir(parents=True, exist_ok=True)
        with open(TRACE / "writes.tsv", "a", encoding="utf-8") as fh:
            fh.write(f"{RANK}\t{path}\n")
        return original(path)

    return atomic_path


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import ensemble.core.io as io
    import ensemble.models.dual_tower.model as dual_tower
    import ensemble.models.llm.model as llm
    import ensemble.pipeline.oof as oof

    for module in (dual_tower, llm):
        module.train_loop = traced_loop(module.train_loop)
    io.atomic_path = oof.atomic_path = traced_writes(io.atomic_path)
    sys.argv = [str(ROOT / "stages" / "oof.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
