"""Knowledge distillation (docs/methods/distill.md): spec.py (recipe keys), stage.py (the stage). Imports nothing, so
that reading the recipe schema never pulls in the stage."""
