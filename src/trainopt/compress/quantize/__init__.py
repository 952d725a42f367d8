"""Quantization (docs/methods/quantize.md): spec.py (recipe keys), dynamic.py (dynamic int8, SmoothQuant, QAT and its
save format), weight_only.py (torchao int8/int4 and its save format), stage.py (the stage). Imports nothing, so that
reading the recipe schema never pulls in the stage."""
