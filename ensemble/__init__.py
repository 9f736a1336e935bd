"""Stacking ensemble for pairwise human-preference prediction (LMSYS Chatbot Arena format)."""

__version__ = "0.1.0"

#: Column order of every probability matrix in the project: P(A wins), P(B wins), P(tie).
TARGETS = ("winner_model_a", "winner_model_b", "winner_tie")
