"""Blenders fitted on the base models' OOF probabilities."""
