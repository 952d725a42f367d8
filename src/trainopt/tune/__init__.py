"""Hyperparameter search on Optuna (docs/methods/tune.md): spec.py (the `search:` keys), study.py (`trainopt tune`).
Imports nothing, so that reading the recipe schema never pulls in Optuna."""
