"""Data augmentation (docs/methods/augment.md): spec.py (recipe keys), eda.py, wordnet.py, contextual.py,
backtranslate.py (the operations), stage.py (the stage and `augment_texts`). Imports nothing, so that reading the
recipe schema never pulls in the operations."""
