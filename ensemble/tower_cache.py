"""Process-wide caches of the dual tower's frozen encoder, shared by every fold of a run."""

from __future__ import annotations

import numpy as np

#: Pooled vectors of a frozen encoder, shared by every fold of a run: each distinct tower text is
#: encoded once per process instead of once per fold (the demo's CPU budget depends on it).
POOLED_CACHE: dict = {"key": None, "vectors": {}}
#: Frozen encoder: the predict path's (pa, pb) per (encoder, frame). That path is a deterministic
#: function of both, so a hit is bit-identical to recomputing: the valid frame scored during fit and
#: the test frame scored by every fold are encoded once.
FRAME_CACHE: dict = {}
FRAME_CACHE_SIZE = 4


def tower_key(ids) -> bytes:
    return np.asarray(ids, dtype=np.int32).tobytes()


def ids_key(enc: dict) -> str:
    import hashlib

    h = hashlib.sha1()
    for side in ("a", "b"):
        for ids in enc[side]:
            h.update(tower_key(ids))
            h.update(b"|")
    return h.hexdigest()


def remember(enc: dict, pooled: tuple) -> None:
    """Put vectors computed by the predict path into the frozen-encoder tower cache (its key was
    set by the _cached_pooled call that precedes this in fit)."""
    cache = POOLED_CACHE["vectors"]
    for side, vectors in zip(("a", "b"), pooled):
        for ids, vec in zip(enc[side], np.asarray(vectors)):
            cache.setdefault(tower_key(ids), vec)
