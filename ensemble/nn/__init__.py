"""The torch parts the transformer models share: one training loop, padding and batching,
multi-device inference, DDP ranks, offline Hugging Face loading, the GGUF conversion."""
