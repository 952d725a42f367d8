"""Pruning (docs/methods/prune.md): spec.py (recipe keys), masks.py (unstructured and 2:4 masks), structured.py
(heads and FFN neurons removed), kernels.py (2:4 timed on cuSPARSELt), sparse24.py (the 2:4 Linear), stage.py (the
stage), summary.py (the report's words). Imports nothing, so that reading the recipe schema never pulls in the stage."""
