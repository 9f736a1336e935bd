"""The caches of one run, owned by whoever runs the models (the OOF runner, submit, a benchmark) and
handed to every model it creates, so nothing is remembered behind the caller's back.

What is cached is a pure function of its key (a response's features, a frozen encoder's vector of a
tower, a frozen decoder layer's hidden states of a sequence): a hit is bit-identical to recomputing,
and the folds of a run share the work instead of each redoing it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class RunCache:
    """Named stores, each a dict. `store(name, key)` empties the store when `key` changes (another
    backbone, other weights), so one store never mixes entries of two keys; `max_items` bounds it
    (oldest entries go first)."""

    def __init__(self) -> None:
        self._stores: dict[str, tuple[Any, OrderedDict]] = {}

    def store(self, name: str, key: Any = None) -> OrderedDict:
        held = self._stores.get(name)
        if held is None or held[0] != key:
            held = (key, OrderedDict())
            self._stores[name] = held
        return held[1]

    def clear(self, name: str | None = None) -> None:
        if name is None:
            self._stores.clear()
        else:
            self._stores.pop(name, None)

    def sizes(self) -> dict[str, int]:
        return {name: len(held[1]) for name, held in self._stores.items()}
