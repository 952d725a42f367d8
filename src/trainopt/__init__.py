"""trainopt: make transformer language models cheaper to train and smaller to serve, and prove it."""

import logging

from .version import __version__

# transformers imports torchao when it is installed (for weight-only quantization); torchao 0.18 on torch 2.13 then
# logs two deprecation warnings from torch's pytree registry on every model import. Nothing a user can act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def run(recipe=None, out=None, overrides=None, resume=False, overwrite=False) -> dict:
    """Run a recipe (YAML path, built-in name, dict or Recipe); returns the report (see DESIGN.md)."""
    from .runner import run as _run

    return _run(recipe, out=out, overrides=overrides, resume=resume, overwrite=overwrite)


def load_recipe(spec=None, overrides=None):
    """Load and validate a recipe without running it."""
    from .recipe import load_recipe as _load

    return _load(spec, overrides)


def predict(model_dir, texts, **kwargs):
    """Batch inference with a saved stage model."""
    from .predict import predict as _predict

    return _predict(model_dir, texts, **kwargs)


__all__ = ["__version__", "run", "load_recipe", "predict"]
