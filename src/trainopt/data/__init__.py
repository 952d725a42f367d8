"""Data: sources.py (jsonl/csv/txt/parquet/bundled), prepare.py (cleaning, splits, tokenization: load_texts,
tokenize), batching.py (packing, length bucketing), augment/ (the augment stage). Imports nothing, so that reading
the recipe schema (augment/spec.py) never pulls in torch."""
