"""Data: sources, cleaning, splits, tokenization and batching."""

from .batching import ClassificationSplit, LMSplit
from .prepare import DataBundle, TextData, load_texts, tokenize

__all__ = ["ClassificationSplit", "LMSplit", "DataBundle", "TextData", "load_texts", "tokenize"]
