"""Compression stages: quantization (and, as they land, pruning and distillation)."""
