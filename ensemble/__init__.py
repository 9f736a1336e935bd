"""Stacking ensemble for pairwise human-preference prediction (LMSYS Chatbot Arena format)."""

import os

# OpenMP threads (torch, LightGBM) spin while they wait; beside any other busy process on a 2-core
# machine that made LightGBM fits ~100x and LLM steps ~25x slower here. Passive waiting costs
# nothing measurable on an idle machine. Set before torch or lightgbm loads libgomp: every module
# of the package imports this one first. An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

#: Column order of every probability matrix in the project: P(A wins), P(B wins), P(tie).
TARGETS = ("winner_model_a", "winner_model_b", "winner_tie")


def __getattr__(name: str):
    """`from ensemble import Judge` imports ensemble.judge (pandas, the blenders) only when asked: `import
    ensemble` stays cheap for the stages and CLIs that never judge."""
    if name == "Judge":
        # importlib, not an import statement: the fingerprint's code digest follows every import statement of
        # this file (ensemble.core.fingerprint.file_imports), and a model's code must not include the Judge
        import importlib

        return importlib.import_module("ensemble.judge").Judge
    raise AttributeError(f"module 'ensemble' has no attribute {name!r}")
