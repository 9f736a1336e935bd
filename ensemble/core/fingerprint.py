"""Identities: what a fold learned from, as digests."""

from __future__ import annotations


def tensor_digest(named, head: str = "") -> str:
    """sha1 over (name, raw bytes) of named tensors: the identity of a set of weights."""
    import hashlib

    import torch

    h = hashlib.sha1(head.encode())
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return h.hexdigest()
