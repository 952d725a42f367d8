"""The `eval` stage: spec.py (recipe keys), stage.py (the stage)."""
